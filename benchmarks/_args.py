"""Argument types shared by the benchmark scripts: a count is a whole number of 1 or more.

A zero or negative count used to be replaced by the default (``args.runs or 3``), run as
given into an endless loop (``ledger_history.py --limit 0``), or fail deep in a run with a
traceback; now ``argparse`` refuses it with exit 2 before anything runs.
"""

from __future__ import annotations

import argparse
import os


def positive_int(text: str) -> int:
    """``--runs 3``: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def choose(parser: argparse.ArgumentParser, given: str | None, known: list[str]) -> list[str]:
    """The comma-separated subset ``given`` of ``known`` (all of them when not given); an
    unknown name is the parser's error."""
    if not given:
        return list(known)
    chosen = given.split(",")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def postgres_url(text: str) -> str:
    """``--database-url``: a PostgreSQL URL (empty: none, as an unset variable)."""
    if text and not text.startswith(("postgresql://", "postgresql+psycopg://")):
        raise argparse.ArgumentTypeError("not a PostgreSQL URL (postgresql+psycopg://...)")
    return text


def existing_directory(text: str) -> str:
    """``--workdir``: a directory that exists (the benchmark makes its own inside)."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"not an existing directory: {text!r}")
    return text
