"""Plumbing shared by the ``puhui`` command line's modules: exit codes, error reporting,
the console and the one JSON line for machines."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
import typer
from rich.console import Console

from puhui.errors import PuhuiError
from puhui.store import create_engine, migrate

EXIT_OK: Final = 0
EXIT_PROBLEM: Final = 1
"""The command ran and found a problem (``verify`` failed, a demo step went wrong)."""
EXIT_ERROR: Final = 2
"""A ``PuhuiError`` (or a usage error) stopped the command."""

CONSOLE_WIDTH_UNATTACHED_CHARS: Final = 110
"""Width of Rich output when stdout is not a terminal (pipes, CI logs), in characters."""


class StoreUnavailableError(PuhuiError):
    """The SQL store named by ``--database-url`` / ``$PUHUI_DATABASE_URL`` cannot be opened."""

    code = "store_unavailable"


class OutputUnwritableError(PuhuiError):
    """A file the command was asked to write (``--out``, ``--log``) cannot be written."""

    code = "output_unwritable"


class DataDirUnavailableError(PuhuiError):
    """The data directory (or a directory under it, as the risk engine's) cannot be created or
    is not a directory."""

    code = "data_dir_unavailable"


def make_data_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if needed; a place that cannot be a directory (a file
    there or on the way, no permission) is ``data_dir_unavailable``, not a traceback."""
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


@contextlib.contextmanager
def opened_store(url: str) -> Iterator[sa.Engine]:
    """The SQL store at ``url``, migrated to the newest schema; disposed of afterwards. A URL
    that names no known database, or a database that cannot be reached, is
    ``store_unavailable`` (no traceback)."""
    try:
        engine = create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as error:
        raise StoreUnavailableError(
            f"not a usable database URL: {_store_url_shown(url)} ({type(error).__name__})"
        ) from None
    except OSError as error:  # the SQLite file's directory cannot be created
        raise StoreUnavailableError(
            f"cannot open the SQL store {_store_url_shown(url)}: cannot create its directory"
            f" {str(error.filename)!r}: {error.strerror or error}"
        ) from None
    try:
        try:
            migrate(engine)
        except (sa.exc.DatabaseError, sa.exc.InterfaceError) as error:  # also not a database
            cause = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise StoreUnavailableError(
                f"cannot open the SQL store {_store_url_shown(url)}: {cause}"
            ) from None
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def written_output(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into ``output_unwritable``."""
    try:
        yield
    except OSError as error:
        raise OutputUnwritableError(
            f"cannot write {path}: {error.strerror or type(error).__name__}"
        ) from None


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a ``PuhuiError`` into one line ``error: <code>: <message>`` on stderr and exit
    code 2 (a message that quotes a multi-line cause, as a database driver's, is joined)."""
    try:
        yield
    except PuhuiError as error:
        message = " ".join(part.strip() for part in error.message.splitlines() if part.strip())
        typer.echo(f"error: {error.code}: {message}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def console() -> Console:
    width = None if sys.stdout.isatty() else CONSOLE_WIDTH_UNATTACHED_CHARS
    return Console(highlight=False, width=width)


def emit_json(data: dict[str, Any]) -> None:
    """Write ``data`` as one line of JSON: always the last line of the command's output."""
    sys.stdout.write(json.dumps(data, sort_keys=False) + "\n")
    sys.stdout.flush()
