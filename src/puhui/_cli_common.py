"""Plumbing shared by the `puhui` command line's modules: exit codes, error reporting,
the console and the one JSON line for machines."""

from __future__ import annotations

import contextlib
import inspect
import json
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import sqlalchemy as sa
import typer
from rich.console import Console
from typer._click import exceptions as click_errors  # typer 0.29 ships click inside (pinned)
from typer._click.globals import get_current_context
from typer.core import TyperGroup

from puhui.errors import InvalidInputError, PuhuiError
from puhui.store import create_engine, current_revision, migrate
from puhui.store._engine import sqlite_path

EXIT_OK: Final = 0
EXIT_PROBLEM: Final = 1
"""The command ran and found a problem (`verify` failed, a demo step went wrong)."""
EXIT_ERROR: Final = 2
"""A `PuhuiError` (or a usage error) stopped the command."""

CONSOLE_WIDTH_UNATTACHED_CHARS: Final = 110
"""Width of Rich output when stdout is not a terminal (pipes, CI logs), in characters."""


STORE_URL_FORMS: Final = (
    "sqlite:///path/to/puhui.sqlite or postgresql+psycopg://user@host:5432/database"
)
"""What a store URL looks like, for the error that refuses one of another form."""


class StoreUnavailableError(PuhuiError):
    """The SQL store named by `--database-url` / `$PUHUI_DATABASE_URL` cannot be opened."""

    code = "store_unavailable"


class StoreNotFoundError(InvalidInputError):
    """A reading command (`tenant list`, `audit verify`, `risk cases list`, ...) was
    pointed at a SQLite store that does not exist: it never creates one."""

    code = "store_not_found"


class OutputUnwritableError(PuhuiError):
    """A file the command was asked to write (`--out`, `--log`) cannot be written."""

    code = "output_unwritable"


class InvalidUsageError(InvalidInputError):
    """The command line itself is wrong: an unknown command or option, an option without its
    value, a value of the wrong type or out of range, a missing argument."""

    code = "invalid_usage"


class DataDirUnavailableError(PuhuiError):
    """The data directory (or a directory under it, as the risk engine's) cannot be created or
    is not a directory."""

    code = "data_dir_unavailable"


def make_data_dir(path: Path) -> None:
    """Create `path` (and its parents) if needed; a place that cannot be a directory (a file
    there or on the way, no permission) is `data_dir_unavailable`, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataDirUnavailableError(
            f"cannot create data directory {str(path)!r}: {error.strerror or error}"
        ) from error


def _store_url_shown(url: str) -> str:
    """The store's URL with any password hidden (safe to print); text that does not parse as
    a URL is not repeated (it may hold a password)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparsable)"


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL (None for a server's URL, an in-memory database, or
    text that is not a URL: `create_engine` judges those)."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    return sqlite_path(parsed.database)


def _sqlite_holds_no_store(path: Path) -> bool:
    """Whether an existing SQLite file plainly holds no store (no migration table: an empty
    file is such a database), read without writing to it. A file that is not SQLite, or one
    that cannot be read so, is for the store's own error to judge."""
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            query = "SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'"
            return db.execute(query).fetchone() is None
    except sqlite3.Error:
        return False


@contextlib.contextmanager
def opened_store(url: str, *, existing: bool = False) -> Iterator[sa.Engine]:
    """The SQL store at `url`, migrated to the newest schema; disposed of afterwards. A URL
    that names no known database, or a database that cannot be reached, is
    `store_unavailable` (no traceback). `existing`: for reading commands, a SQLite file
    that does not exist, or a database (a SQLite file, a PostgreSQL database) that holds no
    store, is `store_not_found`, and nothing is created (no file, no directory, no table)."""
    local = _sqlite_file(url) if existing else None
    if local is not None and (not local.is_file() or _sqlite_holds_no_store(local)):
        raise StoreNotFoundError(
            f"no SQL store at {str(local)!r} (a command that writes, as `puhui demo` or"
            " `puhui tenant create`, creates it)"
        )
    try:
        engine = create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as error:
        raise StoreUnavailableError(
            f"not a usable database URL: {_store_url_shown(url)} ({type(error).__name__});"
            f" a store's URL is {STORE_URL_FORMS}"
        ) from None
    except OSError as error:  # the SQLite file's directory cannot be created
        raise StoreUnavailableError(
            f"cannot open the SQL store {_store_url_shown(url)}: cannot create its directory"
            f" {str(error.filename)!r}: {error.strerror or error}"
        ) from None
    try:
        try:
            if existing and engine.dialect.name != "sqlite" and current_revision(engine) is None:
                raise StoreNotFoundError(
                    f"no SQL store in {_store_url_shown(url)}: its database holds no Puhui"
                    " tables (a command that writes, as `puhui demo` or `puhui tenant create`,"
                    " creates them)"
                )
            migrate(engine)
        except (sa.exc.DatabaseError, sa.exc.InterfaceError) as error:  # also not a database
            cause = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise StoreUnavailableError(
                f"cannot open the SQL store {_store_url_shown(url)}: {cause}"
            ) from None
        yield engine
    finally:
        engine.dispose()


def check_output_file(path: Path) -> None:
    """Refuse, before any work, a file to write that can never be one: an empty name (`''`,
    `.`) or an existing directory is `output_unwritable`."""
    if not path.name or path.is_dir():
        raise OutputUnwritableError(f"cannot write {str(path)!r}: not a file name")


@contextlib.contextmanager
def written_output(path: Path) -> Iterator[None]:
    """Turn an `OSError` while writing `path` into `output_unwritable`."""
    try:
        yield
    except OSError as error:
        raise OutputUnwritableError(
            f"cannot write {path}: {error.strerror or type(error).__name__}"
        ) from None


def _report(error: PuhuiError, as_json: bool) -> None:
    """`error: <code>: <message>` on one line of stderr (a message that quotes a multi-line
    cause, as a database driver's, is joined); with `--json` the same as stdout's last
    line, `{"error": {"code", "message"}}` (a machine reading it finds one JSON object
    there whether the command succeeded or not)."""
    message = " ".join(part.strip() for part in error.message.splitlines() if part.strip())
    typer.echo(f"error: {error.code}: {message}", err=True)
    if as_json:
        emit_json({"error": {"code": error.code, "message": message}})


def _wants_json(args: Sequence[str] | None = None) -> bool:
    """Whether the command line asked for `--json`: the running command's parameter, or,
    before a command runs (a usage error), the word among `args`."""
    if args is not None:
        return "--json" in args
    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("as_json"))


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a `PuhuiError` into one line `error: <code>: <message>` on stderr and exit
    code 2 (with `--json`, also `{"error": {"code", "message"}}` as stdout's last line)."""
    try:
        yield
    except PuhuiError as error:
        _report(error, _wants_json())
        raise typer.Exit(EXIT_ERROR) from None


def _usage_error(error: click_errors.UsageError) -> InvalidUsageError:
    where = error.ctx.command_path if error.ctx is not None else "puhui"
    return InvalidUsageError(f"{where}: {error.format_message()} (see `{where} --help`)")


class OneLineErrorsGroup(TyperGroup):
    """The root command group: a usage error (unknown command or option, a bad or missing
    value) is one line `error: invalid_usage: <message>` on stderr with exit code 2, like
    every other error, instead of click's usage box. Help (`--help`, a group run without
    a command) is printed as before."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        _refuse_empty_places(self)
        _one_line_summaries(self)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click_errors.NoArgsIsHelpError as error:  # the help is printed already
            sys.exit(error.exit_code)
        except click_errors.UsageError as error:
            _exit_with(_usage_error(error), _wants_json(sys.argv[1:] if args is None else args))
        except click_errors.ClickException as error:  # not raised by Puhui's commands today
            error.show()
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


PLACE_PARAMETERS: Final = frozenset({"database_url", "ledger_url", "path_or_url"})
"""Text parameters that name a store or a ledger (beside every `Path` parameter)."""


def _refuse_empty_places(command: Any) -> None:
    """Make an empty value of every parameter naming a place (a `Path`, a store's or a
    ledger's URL) a usage error: `--database-url ''` would otherwise mean the default
    store and `--data-dir ''` the current directory (`Path('')` is `.`), so a script
    whose variable came out empty would quietly work on another place."""
    for param in getattr(command, "params", ()):
        descriptor = getattr(param, "type_descriptor", None)
        place = param.name in PLACE_PARAMETERS or (
            descriptor is not None and descriptor.annotation is Path
        )
        if place and "process_value" not in vars(param):
            param.process_value = _non_empty(param.process_value)
    for sub in getattr(command, "commands", {}).values():
        _refuse_empty_places(sub)


def _one_line_summaries(command: Any) -> None:
    """Give every command a one-line summary (its help's first paragraph, joined) for the
    lists of commands in a group's help: Typer shows that paragraph with the docstring's own
    line breaks, so a summary broke in the middle of a sentence at any terminal width."""
    for sub in getattr(command, "commands", {}).values():
        if sub.short_help is None and sub.help:
            sub.short_help = " ".join(inspect.cleandoc(sub.help).split("\n\n")[0].split())
        _one_line_summaries(sub)


def _non_empty(process_value: Any) -> Any:
    def checked(ctx: Any, value: Any) -> Any:
        if value == "":
            raise click_errors.BadParameter("must not be empty", ctx=ctx)
        return process_value(ctx, value)

    return checked


def _exit_with(error: PuhuiError, as_json: bool = False) -> NoReturn:
    _report(error, as_json)
    sys.exit(EXIT_ERROR)


def console() -> Console:
    width = None if sys.stdout.isatty() else CONSOLE_WIDTH_UNATTACHED_CHARS
    return Console(highlight=False, width=width)


def emit_json(data: dict[str, Any]) -> None:
    """Write `data` as one line of JSON: always the last line of the command's output."""
    sys.stdout.write(json.dumps(data, sort_keys=False) + "\n")
    sys.stdout.flush()
