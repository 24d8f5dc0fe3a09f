"""Plumbing shared by the ``puhui`` command line's modules: exit codes, error reporting,
the console and the one JSON line for machines."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any, Final

import typer
from rich.console import Console

from puhui.errors import PuhuiError

EXIT_OK: Final = 0
EXIT_PROBLEM: Final = 1
"""The command ran and found a problem (``verify`` failed, a demo step went wrong)."""
EXIT_ERROR: Final = 2
"""A ``PuhuiError`` (or a usage error) stopped the command."""

CONSOLE_WIDTH_UNATTACHED_CHARS: Final = 110
"""Width of Rich output when stdout is not a terminal (pipes, CI logs), in characters."""


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a ``PuhuiError`` into ``error: <code>: <message>`` on stderr and exit code 2."""
    try:
        yield
    except PuhuiError as error:
        typer.echo(f"error: {error.code}: {error.message}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def console() -> Console:
    width = None if sys.stdout.isatty() else CONSOLE_WIDTH_UNATTACHED_CHARS
    return Console(highlight=False, width=width)


def emit_json(data: dict[str, Any]) -> None:
    """Write ``data`` as one line of JSON: always the last line of the command's output."""
    sys.stdout.write(json.dumps(data, sort_keys=False) + "\n")
    sys.stdout.flush()
