"""`puhui risk`: judge the engine on a simulated month, train models, backtest rules, and
work the review cases."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from puhui import ledger as tb
from puhui._cli_common import (
    EXIT_OK,
    check_output_file,
    console,
    emit_json,
    opened_store,
    reported_errors,
    written_output,
)
from puhui.clock import SystemClock
from puhui.config import Settings
from puhui.errors import InvalidInputError
from puhui.money import format_amount
from puhui.payments import BankDirection, BankResult, OperationKind, Payments
from puhui.risk import (
    LIST_NAMES,
    CaseNeedsGatewayError,
    CaseOutcome,
    Cases,
    CaseStatus,
    Decision,
    ListEntry,
    ListStore,
    RiskListError,
    find_decisions,
    load_ruleset,
)
from puhui.risk._backtest import backtest
from puhui.risk._engine import DEFAULT_RULES, engine_schema
from puhui.risk._lists import check_entry_input, unknown_list
from puhui.risk._model import RiskModel, TrainingDataError
from puhui.risk._shadow import LIVE_THRESHOLD_DEFAULT, compare_models
from puhui.sim import SimConfig
from puhui.sim._risk import risk_report, run_with_engine, train_on_runs

__all__ = ["risk_app"]

risk_app = typer.Typer(
    help="Risk control: report on a simulated month, train, backtest, review cases.",
    no_args_is_help=True,
)
cases_app = typer.Typer(help="Review cases: list them, decide them.", no_args_is_help=True)
risk_app.add_typer(cases_app, name="cases")
lists_app = typer.Typer(
    help="Block and allow lists (in the SQL store; running engines pick changes up).",
    no_args_is_help=True,
)
risk_app.add_typer(lists_app, name="lists")

AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object last.")]
Customers = Annotated[int, typer.Option(help="Customers of the simulated economy.")]
Days = Annotated[int, typer.Option(help="Simulated days.")]
Rules = Annotated[Path | None, typer.Option(help="Ruleset file (default: the shipped one).")]


def _progress() -> Progress:
    return Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("days"),
        TimeElapsedColumn(),
        console=console(),
        transient=True,
    )


def _default_log() -> Path:
    return Settings.from_env().data_dir / "risk" / "log"


@risk_app.command("report")
def report(
    customers: Customers = 1_000,
    days: Days = 30,
    seed: Annotated[int, typer.Option(help="A seed not used for training or tuning.")] = 1001,
    fraud_rate: Annotated[float, typer.Option(help="Times the usual fraud incidence.")] = 1.0,
    rules: Rules = None,
    model: Annotated[Path | None, typer.Option(help="A model file from `risk train`.")] = None,
    shadow_model: Annotated[
        Path | None,
        typer.Option(help="A second model scored beside the live one (never acting); compared."),
    ] = None,
    model_threshold: Annotated[
        float, typer.Option(help="The live model's acting score (the ruleset's model rule).")
    ] = LIVE_THRESHOLD_DEFAULT,
    log: Annotated[
        Path | None, typer.Option(help="Keep the engine's decision log (and labels) here.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Run a simulated month with the engine in front of every event and report the fraud
    loss rate, honest customers rejected or challenged, precision and recall per scenario;
    with `--shadow-model`, live against shadow (AUC, precision and recall at the live
    threshold, the decisions that would change)."""
    with reported_errors(), contextlib.ExitStack() as stack:
        if not 0 <= model_threshold <= 1000:  # a score is 0-1000 (NaN is neither)
            raise InvalidInputError(f"model_threshold must be 0..1000, not {model_threshold}")
        config = SimConfig(customers=customers, days=days, seed=seed, fraud_rate=fraud_rate)
        loaded = RiskModel.load(model) if model is not None else None
        shadow = RiskModel.load(shadow_model) if shadow_model is not None else None
        if log is not None:
            with written_output(log):  # before the run: an unusable --log stops nothing midway
                log.mkdir(parents=True, exist_ok=True)
        log_dir = log
        if log_dir is None and shadow is not None:  # the comparison reads the log
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="puhui-")))
        with _progress() as progress:
            task = progress.add_task("days", total=days)
            sim, events = run_with_engine(
                config,
                rules=rules,
                model=loaded,
                shadow_model=shadow,
                log_dir=log_dir,
                on_day=lambda day: progress.update(task, completed=day + 1),
            )
        labels = [1 if label else 0 for label in sim.risk_labels]
        if log is not None:
            with written_output(log / "labels.json"):
                (log / "labels.json").write_text(json.dumps(labels))
        figures = risk_report(sim, events)
        figures["model"] = loaded.version if loaded is not None else "none"
        _print_report(figures)
        if shadow is not None and log_dir is not None:
            ruleset = load_ruleset(rules or DEFAULT_RULES, engine_schema())
            compared = compare_models(ruleset, log_dir, labels, threshold=model_threshold)
            figures["shadow"] = compared
            _print_shadow(compared)
        if as_json:
            emit_json({"command": "risk report", **figures})


def _print_shadow(compared: dict[str, Any]) -> None:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table(title=f"Live model against shadow (threshold {compared['threshold']:g})")
    for column in ("model", "version", "AUC", "flagged", "precision", "recall"):
        table.add_column(column, justify="left" if column in ("model", "version") else "right")
    for side in ("live", "shadow"):
        s = compared[side]
        table.add_row(
            side,
            escape(compared[f"{side}_model"][:16]),
            num(s["auc"]),
            f"{s['flagged']:,}",
            num(s["precision"]),
            num(s["recall"]),
        )
    shown = console()
    shown.print(table)
    c = compared["changed"]
    shown.print(
        f"decisions that would change with the shadow live: {c['decisions']:,}"
        f" (stricter on {c['stricter_fraud']:,} fraud / {c['stricter_good']:,} honest events,"
        f" laxer on {c['laxer_fraud']:,} fraud / {c['laxer_good']:,} honest)"
    )


def _print_report(figures: dict[str, Any]) -> None:
    shown = console()
    table = Table(title="Fraud by scenario (held-out simulated run)")
    for column in ("scenario", "attacks", "events", "recall", "precision", "attempted", "lost"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for name, s in figures["scenarios"].items():
        table.add_row(
            escape(name),
            f"{s['attacks']:,}",
            f"{s['events']:,}",
            "-" if s["recall"] is None else f"{s['recall']:.3f}",
            "-" if s["precision"] is None else f"{s['precision']:.3f}",
            format_amount(s["attempted"], "CNY"),
            format_amount(s["lost"], "CNY"),
        )
    shown.print(table)
    shown.print(
        f"loss rate {figures['loss_rate']:.2e} (target <= 1e-5) of volume"
        f" {format_amount(figures['volume'], 'CNY')} CNY; honest money events rejected"
        f" {figures['good_rejected_rate']:.3%} (<= 0.1%), challenged"
        f" {figures['good_challenged_rate']:.3%} (<= 0.5%), held for review"
        f" {figures['good_reviewed_rate']:.3%}"
    )


@risk_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="Where to write the model file.")],
    customers: Customers = 1_000,
    days: Days = 30,
    seed: Annotated[
        list[int] | None, typer.Option(help="Training seeds (repeat the option); default 1.")
    ] = None,
    fraud_rate: Annotated[
        float, typer.Option(help="Times the usual fraud incidence (more examples to learn).")
    ] = 5.0,
    as_json: AsJson = False,
) -> None:
    """Simulate (with every event accepted, so fraud runs its course), and train a model on
    the features the engine logged, labelled by the simulation's truth."""
    with reported_errors():
        check_output_file(out)
        seeds = seed or [1]
        configs = [
            SimConfig(customers=customers, days=days, seed=s, fraud_rate=fraud_rate) for s in seeds
        ]
        with _progress() as progress:
            task = progress.add_task("days", total=days * len(configs))
            done = [0]

            def tick(_day: int) -> None:
                done[0] += 1
                progress.update(task, completed=min(done[0], days * len(configs)))

            try:
                model = train_on_runs(configs, on_day=tick)
            except TrainingDataError as error:  # a run too small to hold fraud and honest events
                raise TrainingDataError(
                    f"{error.message} (fraud); simulate more: --customers, --days,"
                    " --fraud-rate or another --seed"
                ) from None
        with written_output(out):
            model.save(out)
        m = model.metrics
        console().print(
            f"model {model.version} -> {escape(str(out))}: AUC {m.auc:.4f} on {m.rows:,} held-out"
            f" rows ({m.positives:,} fraud); precision {m.precision_at_500:.3f}, recall"
            f" {m.recall_at_500:.3f} at score 500"
        )
        if as_json:
            emit_json(
                {
                    "command": "risk train",
                    "model": str(out),
                    "version": model.version,
                    "seeds": seeds,
                    "metrics": m.as_json(),
                }
            )


def _day_ns(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"not a date (YYYY-MM-DD): {text!r}") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9


@risk_app.command("backtest")
def backtest_command(
    rules: Annotated[Path, typer.Option(help="The candidate ruleset file.")],
    log: Annotated[
        Path | None, typer.Option(help="Decision log with labels.json (`risk report --log`).")
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="First day (UTC).")] = None,
    to: Annotated[str | None, typer.Option(help="Day after the last (UTC).")] = None,
    as_json: AsJson = False,
) -> None:
    """Replay the logged history through a candidate ruleset: hits, precision, recall, fraud
    amount caught and good events hit, per rule and overall."""
    with reported_errors():
        directory = log or _default_log()
        labels_file = directory / "labels.json"
        if not labels_file.exists():
            raise InvalidInputError(f"no labels.json in {directory} (see `risk report --log`)")
        try:
            labels = json.loads(labels_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            labels = None
        if not isinstance(labels, list) or not all(label in (0, 1) for label in labels):
            raise InvalidInputError(f"{labels_file} is not a JSON list of 0 and 1 labels")
        ruleset = load_ruleset(rules, engine_schema())
        result = backtest(ruleset, directory, labels, from_ns=_day_ns(from_), to_ns=_day_ns(to))
        table = Table(title=f"Backtest of {escape(ruleset.version)}")
        for column in ("rule", "hits", "fraud", "good", "precision", "recall", "fraud amount"):
            table.add_column(column, justify="left" if column == "rule" else "right")
        for rule_id, s in result["rules"].items():
            table.add_row(
                escape(rule_id),
                f"{s['hits']:,}",
                f"{s['fraud_hits']:,}",
                f"{s['good_hits']:,}",
                "-" if s["precision"] is None else f"{s['precision']:.3f}",
                f"{s['recall']:.3f}",
                format_amount(s["fraud_amount"], "CNY"),
            )
        shown = console()
        shown.print(table)
        shown.print(
            f"{result['events']:,} events, {result['fraud']:,} fraud; flagged"
            f" {result['flagged']:,} (precision {result['precision'] or 0:.3f}, recall"
            f" {result['recall']:.3f}); good events hit {result['good_flagged']:,};"
            f" {result['added_latency_us_per_event']:.2f} us per event"
        )
        if as_json:
            emit_json({"command": "risk backtest", **result})


@risk_app.command("decisions")
def decisions_command(
    log: Annotated[
        Path | None, typer.Option(help="Decision log directory (default: the server's).")
    ] = None,
    customer: Annotated[int | None, typer.Option(help="Only this customer's.")] = None,
    decision: Annotated[Decision | None, typer.Option(help="Only this decision.")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="First day (UTC).")] = None,
    to: Annotated[str | None, typer.Option(help="Day after the last (UTC).")] = None,
    after: Annotated[int, typer.Option(help="Cursor: decisions after this log id.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many (1-1000).")] = 20,
    features: Annotated[
        bool, typer.Option("--features", help="Print every feature value each one saw.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Logged decisions, oldest first, each with the values of every feature it saw (in
    `--json` always): any decision explained after the fact. Reads the log without
    writing, so a running server's log may be read."""
    with reported_errors():
        directory = log or _default_log()
        if not directory.is_dir():  # a mistyped --log would otherwise read as "no decisions"
            raise InvalidInputError(
                f"no decision log at {directory} (see `puhui serve --risk-dir`,"
                " `puhui risk report --log`)"
            )
        found = find_decisions(
            directory,
            customer_id=customer,
            decision=decision,
            from_ns=_day_ns(from_),
            to_ns=_day_ns(to),
            after_id=after,
            limit=limit,
        )
        table = Table(title="Logged decisions")
        for column in ("id", "time (UTC)", "customer", "event", "amount", "decision", "reasons"):
            table.add_column(column)
        for d in found:
            table.add_row(
                str(d.id),
                _at_text(d.at_ns),
                str(d.customer_id),
                str(d.kind),
                f"{format_amount(d.amount, d.currency)} {d.currency}" if d.amount else "",
                f"{d.decision} {d.score}",
                escape("; ".join(d.reasons[:3])),
            )
        shown = console()
        shown.print(table)
        if features:
            for d in found:
                values = ", ".join(
                    f"{name}={'-' if value is None else f'{value:g}'}"
                    for name, value in d.features.items()
                )
                shown.print(f"[bold]{d.id}[/bold] {escape(values)}")
        if as_json:
            emit_json(
                {
                    "command": "risk decisions",
                    "decisions": [d.as_json() for d in found],
                    "next_after": found[-1].id if found else None,
                }
            )


GATEWAY_FREE_KINDS: Final = frozenset(
    {OperationKind.P2P, OperationKind.MERCHANT_PAYMENT, OperationKind.ORDER_PAYMENT}
)
"""Held operations whose approval only posts the ledger hold. Approving any other kind
(top-up, withdrawal, bill payment) goes on to the bank or a biller."""


class _NoGateway:
    """The command line's bank gateway: it has none (a deployment's gateway lives in the API
    server). `cases decide` refuses before recording a decision that would need it; this
    is the guard behind that check, never a simulator that would fake money movements."""

    def submit(
        self, direction: BankDirection, reference: str, card_token: str, amount: int, currency: str
    ) -> BankResult:
        raise CaseNeedsGatewayError("the command line has no bank gateway")

    def query(self, reference: str) -> BankResult:
        raise CaseNeedsGatewayError("the command line has no bank gateway")


@contextlib.contextmanager
def _cases(case_id: int) -> Iterator[tuple[Cases, Payments]]:
    """The case queue, with the payments service wired to carry out decisions (without a
    bank gateway: see `_NoGateway`). A case that does not exist is `case_not_found`
    before the ledger is opened (which would make one, and bind the store to it)."""
    settings = Settings.from_env()
    with opened_store(settings.database_url, existing=True) as engine:
        clock = SystemClock()
        cases = Cases(engine, clock)
        cases.case(case_id)
        ledger = tb.open(settings.ledger_url)
        try:
            payments = Payments(engine, ledger, clock=clock, bank=_NoGateway(), cases=cases)
            yield cases, payments
        finally:
            ledger.close()


def _check_gateway_free(cases: Cases, payments: Payments, case_id: int, outcome: str) -> None:
    """Refuse (before anything is recorded) a decision whose carrying out needs the bank or
    a biller, which the command line does not have."""
    if CaseOutcome(outcome) is not CaseOutcome.APPROVE:
        return  # a rejection only voids the hold; escalation moves nothing
    case = cases.case(case_id)
    if case.subject_kind != "operation" or case.status not in (
        CaseStatus.OPEN,
        CaseStatus.ESCALATED,
    ):
        return  # decided already: Cases.decide says so
    op = payments.operation(int(case.subject_id, 16))
    if op.kind not in GATEWAY_FREE_KINDS:
        raise CaseNeedsGatewayError(
            f"approving case {case_id} sends a held {op.kind} on to the bank or biller, which"
            " the command line has no gateway for: decide it over the API"
            f" (POST /v1/risk/cases/{case_id}/decision)"
        )


@cases_app.command("list")
def cases_list(
    status: Annotated[
        CaseStatus | None, typer.Option(help="Only cases of this status.")
    ] = CaseStatus.OPEN,
    after: Annotated[int, typer.Option(help="Cursor: cases after this id.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: AsJson = False,
) -> None:
    """Cases waiting for an analyst (or of another status), oldest first."""
    with (
        reported_errors(),
        opened_store(Settings.from_env().database_url, existing=True) as engine,
    ):
        found = Cases(engine, SystemClock()).cases(status, after_id=after, limit=limit)
        table = Table(title="Review cases")
        for column in ("id", "status", "customer", "amount", "score", "reasons"):
            table.add_column(column)
        for c in found:
            table.add_row(
                str(c.id),
                str(c.status),
                str(c.customer_id),
                f"{format_amount(c.amount, c.currency)} {c.currency}",
                str(c.score),
                escape("; ".join(c.reasons[:3])),
            )
        console().print(table)
        if as_json:
            emit_json(
                {
                    "command": "risk cases list",
                    "cases": [c.as_json() for c in found],
                    "next_after": found[-1].id if found else None,
                }
            )


@cases_app.command("decide")
def cases_decide(
    case_id: Annotated[int, typer.Argument(help="The case id.")],
    analyst: Annotated[str, typer.Option(help="Who decides.")],
    outcome: Annotated[CaseOutcome, typer.Option(help="approve, reject or escalate.")],
    note: Annotated[str, typer.Option(help="Why.")] = "",
    takeover: Annotated[
        bool, typer.Option(help="Confirmed account takeover (with reject): freeze the account.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Decide a case: approve releases the held payment, reject returns it. Approving a held
    top-up, withdrawal or bill payment needs the bank or a biller: refused here
    (`case_needs_gateway`), decide those over the API."""
    with reported_errors(), _cases(case_id) as (cases, payments):
        _check_gateway_free(cases, payments, case_id, outcome)
        case = cases.decide(
            case_id, analyst=analyst, outcome=outcome, note=note, account_takeover=takeover
        )
        console().print(
            f"case {case.id}: {case.status} by {escape(case.analyst or '')}"
            f" ({'carried out' if case.resolved else 'to be carried out'})"
        )
        if as_json:
            emit_json({"command": "risk cases decide", "case": case.as_json()})
        raise typer.Exit(EXIT_OK)


# --- block and allow lists -----------------------------------------------------------------

_DURATION_UNITS_S: Final = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def _expiry_ns(expires_in: str | None, now_ns: int) -> int | None:
    """`30m`, `12h`, `7d` (or seconds: `3600s`) from now, in ns; `None`: never."""
    if expires_in is None:
        return None
    text = expires_in.strip()
    unit = _DURATION_UNITS_S.get(text[-1:])
    if unit is None or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise RiskListError(f"--expires-in is a positive whole number of s, m, h or d: {text!r}")
    return now_ns + int(text[:-1]) * unit * 10**9


@contextlib.contextmanager
def _list_store(*, existing: bool = False) -> Iterator[ListStore]:
    """`existing`: for reading (and removing), never created (`store_not_found`)."""
    with opened_store(Settings.from_env().database_url, existing=existing) as engine:
        yield ListStore(engine, SystemClock())


def _entry_json(name: str, entry: ListEntry, now_ns: int) -> dict[str, Any]:
    return {
        "list": name,
        "value": entry.value,
        "reason": entry.reason,
        "added_at_ns": entry.added_at_ns,
        "expires_at_ns": entry.expires_at_ns,
        "live": entry.is_live(now_ns),
    }


def _at_text(ns: int | None) -> str:
    if ns is None:
        return "never"
    return datetime.fromtimestamp(ns / 10**9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@lists_app.command("show")
def lists_show(
    name: Annotated[str | None, typer.Argument(help="One list (default: every list).")] = None,
    as_json: AsJson = False,
) -> None:
    """The entries of the block and allow lists (expired ones too, marked)."""
    with reported_errors(), _list_store(existing=True) as store:
        names = [name] if name is not None else list(store.names)
        now = store.clock.now_ns()
        rows = [(n, e) for n in names for e in store.entries(n)]
        table = Table(title="Risk lists")
        for column in ("list", "value", "reason", "added", "expires"):
            table.add_column(column)
        for list_name, entry in rows:
            expires = _at_text(entry.expires_at_ns)
            table.add_row(
                escape(list_name),
                escape(entry.value),
                escape(entry.reason),
                _at_text(entry.added_at_ns),
                expires if entry.is_live(now) else f"{expires} (expired)",
            )
        console().print(table)
        if as_json:
            emit_json(
                {
                    "command": "risk lists show",
                    "version": store.version(),
                    "entries": [_entry_json(n, e, now) for n, e in rows],
                }
            )


@lists_app.command("add")
def lists_add(
    name: Annotated[str, typer.Argument(help="The list, e.g. blocked_devices.")],
    value: Annotated[str, typer.Argument(help="What to list (c:<id> for a customer).")],
    reason: Annotated[str, typer.Option(help="Why (kept with the entry).")],
    expires_in: Annotated[
        str | None, typer.Option(help="Lapse after this long: 30m, 12h, 7d (default: never).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Put a value on a list (replacing its entry there, if any)."""
    with reported_errors():
        # The entry is checked before the store opens: a refused one creates no store.
        if name not in LIST_NAMES:
            raise unknown_list(name, LIST_NAMES)
        check_entry_input(value, reason, _expiry_ns(expires_in, SystemClock().now_ns()))
    with reported_errors(), _list_store() as store:
        expires = _expiry_ns(expires_in, store.clock.now_ns())
        entry = store.add(name, value, reason=reason, expires_at_ns=expires)
        console().print(f"{escape(value)} on {escape(name)} until {_at_text(entry.expires_at_ns)}")
        if as_json:
            emit_json(
                {
                    "command": "risk lists add",
                    "entry": _entry_json(name, entry, store.clock.now_ns()),
                }
            )


@lists_app.command("remove")
def lists_remove(
    name: Annotated[str, typer.Argument(help="The list.")],
    value: Annotated[str, typer.Argument(help="The value to take off it.")],
    as_json: AsJson = False,
) -> None:
    """Take a value off a list."""
    with reported_errors(), _list_store(existing=True) as store:
        removed = store.remove(name, value)
        console().print(
            f"{escape(value)} {'removed from' if removed else 'was not on'} {escape(name)}"
        )
        if as_json:
            emit_json({"command": "risk lists remove", "removed": removed})
