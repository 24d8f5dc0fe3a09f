"""The platform's CLI commands: `puhui serve`, `puhui tenant create|list`,
`puhui key create|revoke|list`, `puhui audit verify`.

Registered on the main app by `puhui.cli` (`register(app)`). The SQL store is
`--database-url` or `$PUHUI_DATABASE_URL` (default: the SQLite file in ./puhui-data),
migrated to the newest schema before use. Exit codes as the rest of the CLI: 0 ok, 1 a check
found a problem (`audit verify`), 2 an error (`error: <code>: <message>` on stderr).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Final

import sqlalchemy as sa
import typer

from puhui._cli_common import EXIT_OK, EXIT_PROBLEM, make_data_dir, opened_store
from puhui._cli_common import emit_json as _emit_json
from puhui._cli_common import reported_errors as _reported_errors
from puhui._serve_workers import WORKERS_MAX, serve_workers
from puhui.config import Settings
from puhui.errors import PuhuiError
from puhui.platform import ApiKey, AuditLog, Scope, Tenant, Tenants, WebhookOptions

tenant_app = typer.Typer(
    help="Create and list tenants (partner institutions).", no_args_is_help=True
)
key_app = typer.Typer(help="Create, revoke and list API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Check the API's hash-chained audit log.", no_args_is_help=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQL store: sqlite:///path or postgresql+psycopg://... "
        "Default: $PUHUI_DATABASE_URL, else <data dir>/puhui.sqlite "
        "(data dir: $PUHUI_DATA_DIR, else ./puhui-data/).",
        show_default=False,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Also print one JSON object as the last line.")
]


def register(app: typer.Typer) -> None:
    """Add the platform's commands to the `puhui` app."""
    app.command()(serve)
    app.add_typer(tenant_app, name="tenant")
    app.add_typer(key_app, name="key")
    app.add_typer(audit_app, name="audit")


@contextlib.contextmanager
def _store(database_url: str | None, *, existing: bool = False) -> Iterator[sa.Engine]:
    """`existing`: a reading command's store, never created (`store_not_found`)."""
    url = database_url or Settings.from_env().database_url
    with opened_store(url, existing=existing) as engine:
        yield engine


def _tenant_dict(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "kind": tenant.kind.value,
        "status": tenant.status.value,
        "created_at_ns": tenant.created_at_ns,
    }


def _key_dict(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "scopes": sorted(s.value for s in key.scopes),
        "created_at_ns": key.created_at_ns,
        "revoked": key.revoked,
        "revoked_at_ns": key.revoked_at_ns,
    }


# --- serve ----------------------------------------------------------------------------------


SERVER_START_FAILED: Final = 3
"""`puhui serve`'s exit status when uvicorn could not start the server (uvicorn's own)."""


class AddressUnavailableError(PuhuiError):
    """`puhui serve` cannot listen on `--host`:`--port`: another program listens there, the
    host is not an address of this machine, or its name does not resolve."""

    code = "address_unavailable"


def _bind(host: str, port: int) -> list[socket.socket]:
    """Bind every address `host` names (as the event loop would), before the server makes
    anything (store, ledger, risk directory): an address it cannot listen on is
    `address_unavailable` at once, not uvicorn's error after its whole start. They listen
    from here on and are handed to uvicorn: no other program can take the port in between.
    The caller closes them."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise AddressUnavailableError(
            f"cannot listen on {where}: {error.strerror} (--host names no address)"
        ) from None
    except UnicodeError:  # a name the resolver cannot even encode (an empty label, > 63 chars)
        raise AddressUnavailableError(
            f"cannot listen on {where}: not a host name (--host names no address)"
        ) from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this kernel lacks (IPv6 disabled): skipped, as asyncio does
                continue
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the loop does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
                # Listening at once holds the port (a socket bound alone can still be bound
                # by another with SO_REUSEADDR); connections wait in the backlog until the
                # server takes them, as under socket activation.
                sock.listen()
            except OSError as error:
                hint = (
                    " (another server listens there: stop it or choose another --port)"
                    if error.errno == errno.EADDRINUSE
                    else ""
                )
                raise AddressUnavailableError(
                    f"cannot listen on {where}: {error.strerror or error}{hint}"
                ) from None
        if not bound:
            raise AddressUnavailableError(
                f"cannot listen on {where}: no address of a kind this machine has"
            )
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    database_url: DatabaseUrl = None,
    ledger_url: Annotated[
        str | None,
        typer.Option(
            "--ledger-url",
            help="Ledger journal. Default: $PUHUI_LEDGER_URL, else <data dir>/ledger "
            "(data dir: $PUHUI_DATA_DIR, else ./puhui-data/).",
            show_default=False,
        ),
    ] = None,
    webhook_interval: Annotated[
        float,
        typer.Option(
            "--webhook-interval",
            help="Seconds between webhook delivery rounds when idle; 0 turns delivery off "
            "(another server delivers).",
            min=0.0,
        ),
    ] = 1.0,
    risk_dir: Annotated[
        Path | None,
        typer.Option(
            "--risk-dir",
            help="The risk engine's decision log and feature state. Default: <data dir>/risk.",
            show_default=False,
        ),
    ] = None,
    risk_rules: Annotated[
        Path | None,
        typer.Option(
            "--risk-rules",
            help="Ruleset file (TOML), hot-reloaded when it changes. Default: the packaged "
            "rules (puhui/risk/rules/default.toml).",
            show_default=False,
        ),
    ] = None,
    risk_model: Annotated[
        Path | None,
        typer.Option(
            "--risk-model",
            help="Model file of `puhui risk train` scoring every event (default: rules only).",
            show_default=False,
        ),
    ] = None,
    risk_shadow_model: Annotated[
        Path | None,
        typer.Option(
            "--risk-shadow-model",
            help="Model file run in shadow: its scores are logged, it decides nothing.",
            show_default=False,
        ),
    ] = None,
    risk_entities: Annotated[
        int,
        typer.Option(
            "--risk-entities",
            help="Most customers the risk feature state holds (and as many devices, merchants, "
            "payees, IPs; twice as many customer-payee pairs), the least recently seen evicted "
            "beyond; room for all of them made at start, so it never stalls decisions to grow. "
            "0: the default bound (262,144 of each kind, about 2.3 GiB), grown as needed.",
            min=0,
            max=1 << 26,
        ),
    ] = 0,
    webhook_loopback: Annotated[
        bool,
        typer.Option(
            "--webhook-loopback",
            help="Development only: accept webhook endpoints on loopback addresses "
            "(127.0.0.1, ::1, localhost), over http:// too. Never in production.",
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="API processes answering on the address; beyond 1 this process keeps the "
            "ledger and the risk engine and serves them to the workers (docs/api.md).",
            min=1,
            max=WORKERS_MAX,
        ),
    ] = 1,
) -> None:
    """Run the open API (FastAPI on uvicorn) over the SQL store and the ledger, deliver
    webhooks beside it, and decide every money movement with the risk engine."""
    import uvicorn

    import puhui.ledger as tb
    from puhui.api import (
        ApiOptions,
        CorkedHttpProtocol,
        configure_logging,
        create_app,
        warm_up_readers,
    )
    from puhui.api._server import ListeningServer
    from puhui.clock import SystemClock
    from puhui.payments import Payments, SimulatedBank
    from puhui.risk import Cases, ListStore, SyncedRiskLists, load_ruleset, open_engine
    from puhui.risk._engine import engine_schema
    from puhui.risk._model import RiskModel

    configure_logging()  # JSON lines on stderr, one per request; uvicorn's own access log off
    with _reported_errors(), contextlib.ExitStack() as listening:
        sockets = _bind(host, port)
        for sock in sockets:
            listening.callback(sock.close)
        settings = Settings.from_env()
        url = ledger_url or settings.ledger_url  # a local journal makes its own directories
        risk_directory = risk_dir or settings.data_dir / "risk"
        # Unusable rules or model files are refused before anything is made (store, ledger,
        # risk directory); so is an unusable store, before the risk directory.
        if risk_rules is not None:
            load_ruleset(risk_rules, engine_schema())
        for model_file in (risk_model, risk_shadow_model):
            if model_file is not None:
                RiskModel.load(model_file)
        clock = SystemClock()
        with _store(database_url) as engine:
            make_data_dir(risk_directory)
            with (
                tb.open(url) as ledger,
                open_engine(
                    risk_directory,
                    clock=clock,
                    rules=risk_rules,
                    model=risk_model,
                    shadow_model=risk_shadow_model,
                    lists=SyncedRiskLists(ListStore(engine, clock)),
                    entities=risk_entities,
                    pairs=min(2 * risk_entities, 1 << 26),
                ) as risk_engine,
            ):
                payments = Payments(
                    engine,
                    ledger,
                    clock=clock,
                    bank=SimulatedBank(clock),
                    decide=risk_engine,
                    cases=Cases(engine, clock),
                )
                options = ApiOptions(
                    webhook_delivery_interval_s=webhook_interval or None,
                    webhooks=WebhookOptions(loopback_allowed=webhook_loopback),
                )
                app = create_app(engine, ledger, clock=clock, options=options, payments=payments)
                # After the app has attached the flows (bills, checkout, webhooks) that finish
                # their own operations: recovery needs them.
                payments.recover()
                if workers > 1:
                    status = serve_workers(
                        workers,
                        sockets=sockets,
                        database_url=engine.url.render_as_string(hide_password=False),
                        ledger=ledger,
                        risk_engine=risk_engine,
                        host=host,
                        port=port,
                        webhook_loopback=webhook_loopback,
                        api_options=options,
                    )
                    if status:
                        raise typer.Exit(status)
                    return
                warm_up_readers()  # the JSON batch routes' compiled readers, loaded now
                server = ListeningServer(
                    uvicorn.Config(
                        app,
                        host=host,
                        port=port,
                        loop="uvloop",
                        http=CorkedHttpProtocol,
                        log_level="info",
                        access_log=False,
                    )
                )
                with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
                    server.run(sockets=sockets)
                if not server.started:  # uvicorn.run's exit when the server could not start
                    raise typer.Exit(SERVER_START_FAILED)


# --- tenants --------------------------------------------------------------------------------


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="The institution's name (unique).")],
    kind: Annotated[
        str,
        typer.Option(help="bank | fund_company | insurer | merchant_acquirer | biller | operator"),
    ] = "bank",
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create a tenant; prints its number."""
    with _reported_errors(), _store(database_url) as engine:
        tenant = Tenants(engine).create(name, kind)
    typer.echo(f"tenant {tenant.id} {tenant.name} ({tenant.kind.value})")
    if as_json:
        _emit_json({"command": "tenant create", "tenant": _tenant_dict(tenant)})


@tenant_app.command("list")
def tenant_list(database_url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """List tenants."""
    with _reported_errors(), _store(database_url, existing=True) as engine:
        tenants = Tenants(engine).list_tenants()
    for tenant in tenants:
        typer.echo(f"{tenant.id}\t{tenant.name}\t{tenant.kind.value}\t{tenant.status.value}")
    if as_json:
        _emit_json({"command": "tenant list", "tenants": [_tenant_dict(t) for t in tenants]})


# --- keys -----------------------------------------------------------------------------------

_SCOPES_HELP = ", ".join(
    f"{scope.value} (operator tenants only)" if scope is Scope.PLATFORM_ADMIN else scope.value
    for scope in Scope
)


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Argument(help="The tenant's number or name.")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help=f"A scope to grant (repeat): {_SCOPES_HELP}.",
        ),
    ],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create an API key. Its token is printed once, now: store it, it cannot be shown again."""
    with _reported_errors(), _store(database_url, existing=True) as engine:
        tenants = Tenants(engine)
        owner = tenants.find(tenant)
        key, token = tenants.create_key(owner.id, scope, name)
    typer.echo(f"key {key.id} for tenant {owner.id} ({' '.join(sorted(key.scopes))})")
    typer.echo(f"token (shown once): {token}")
    if as_json:
        _emit_json({"command": "key create", "key": _key_dict(key), "token": token})


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after 'pk_').")],
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Revoke an API key: running servers refuse it within a second (their key cache)."""
    with _reported_errors(), _store(database_url, existing=True) as engine:
        key = Tenants(engine).revoke_key(key_id)
    typer.echo(f"key {key.id} revoked")
    if as_json:
        _emit_json({"command": "key revoke", "key": _key_dict(key)})


@key_app.command("list")
def key_list(
    tenant: Annotated[
        str | None, typer.Argument(help="Only this tenant's keys (number or name).")
    ] = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """List API keys (never their secrets)."""
    with _reported_errors(), _store(database_url, existing=True) as engine:
        tenants = Tenants(engine)
        tenant_id = tenants.find(tenant).id if tenant is not None else None
        keys: list[ApiKey] = []
        # A listing holds at most `keys_listed_max` keys: page on until one is empty.
        while page := tenants.list_keys(
            tenant_id, after=(keys[-1].created_at_ns, keys[-1].id) if keys else None
        ):
            keys += page
    for key in keys:
        state = "revoked" if key.revoked else "active"
        scopes = " ".join(sorted(key.scopes))
        typer.echo(f"{key.id}\ttenant {key.tenant_id}\t{state}\t{scopes}\t{key.name}")
    if as_json:
        _emit_json({"command": "key list", "keys": [_key_dict(k) for k in keys]})


# --- audit ----------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(database_url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """Check the audit chain; exit 0 if intact, 1 if an entry was edited, inserted or deleted."""
    with _reported_errors(), _store(database_url, existing=True) as engine:
        report = AuditLog(engine).verify()
    if report.ok:
        typer.echo(f"audit log intact: {report.entries} entries, head {report.head_hash}")
    elif (problem := report.problem) is not None:
        typer.echo(
            f"audit log BROKEN at entry {problem.seq}: {problem.kind.value} ({problem.detail})"
        )
    if as_json:
        _emit_json({"command": "audit verify", **report.to_dict()})
    raise typer.Exit(EXIT_OK if report.ok else EXIT_PROBLEM)
