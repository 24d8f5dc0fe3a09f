"""The journal: the durable, append-only record of every batch the ledger accepted.

A journal is a port with two adapters here: SQLite (the embedded default) and PostgreSQL.
Each record is one group commit: an operation number (1, 2, 3, ... with no gaps), a CRC-32 of
the payload, and the payload (see ``encode_group``). ``append`` returns only once the record is
durable (SQLite WAL with ``synchronous=FULL``; PostgreSQL commit with ``synchronous_commit``).

A journal also carries an identity (a UUID made when it is created): snapshots record the
identity of the journal they were taken from and are ignored for any other journal.
"""

from __future__ import annotations

import sqlite3
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._errors import JournalCorruptError, JournalUnavailableError, LedgerLockedError
from ._types import ACCOUNT_DTYPE, TRANSFER_DTYPE

ENTRY_HEADER = struct.Struct("<BxxxIQ")  # kind, count (events, or pulse limit), now
READ_BATCH_RECORDS = 64


class Journal(Protocol):
    identity: str

    def append(self, op: int, payload: bytes) -> None: ...

    def last_op(self) -> int: ...

    def read(self, after_op: int) -> Iterator[tuple[int, bytes]]: ...

    def close(self) -> None: ...


Entry = tuple[int, int, np.ndarray[Any, Any] | None]  # kind, now, events (None for a pulse)


def encode_group(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """Entries of (kind, count, now, event bytes) -> one record payload."""
    parts: list[bytes] = []
    for kind, count, now, body in entries:
        parts.append(ENTRY_HEADER.pack(kind, count, now))
        parts.append(body)
    return b"".join(parts)


def decode_group(payload: bytes) -> list[tuple[int, int, int, np.ndarray[Any, Any] | None]]:
    """Inverse of ``encode_group``: (kind, count, now, events or None for a pulse)."""
    from ._engine import KIND_ACCOUNTS, KIND_PULSE, KIND_TRANSFERS

    out: list[tuple[int, int, int, np.ndarray[Any, Any] | None]] = []
    offset = 0
    view = memoryview(payload)
    while offset < len(payload):
        kind, count, now = ENTRY_HEADER.unpack_from(payload, offset)
        offset += ENTRY_HEADER.size
        if kind == KIND_PULSE:
            out.append((kind, count, now, None))
            continue
        if kind not in (KIND_ACCOUNTS, KIND_TRANSFERS):
            raise JournalCorruptError(f"unknown entry kind {kind} in journal record")
        dtype = ACCOUNT_DTYPE if kind == KIND_ACCOUNTS else TRANSFER_DTYPE
        size = count * dtype.itemsize
        if offset + size > len(payload):
            raise JournalCorruptError("journal record is truncated")
        events = np.frombuffer(view[offset : offset + size], dtype=dtype)
        out.append((kind, count, now, events))
        offset += size
    return out


def checksum(payload: bytes) -> int:
    return zlib.crc32(payload)


class SqliteJournal:
    """Journal in a SQLite file (WAL, ``synchronous=FULL``): one row per group commit."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal ("
            " op INTEGER PRIMARY KEY, checksum INTEGER NOT NULL, payload BLOB NOT NULL)"
        )
        self._db.execute(
            "INSERT OR IGNORE INTO journal_meta (key, value) VALUES ('identity', ?)",
            (str(uuid.uuid4()),),
        )
        row = self._db.execute("SELECT value FROM journal_meta WHERE key = 'identity'").fetchone()
        self.identity = str(row[0])

    def append(self, op: int, payload: bytes) -> None:
        try:
            self._db.execute(
                "INSERT INTO journal (op, checksum, payload) VALUES (?, ?, ?)",
                (op, checksum(payload), payload),
            )
        except sqlite3.Error as error:
            raise JournalUnavailableError(f"journal append failed: {error}") from error

    def last_op(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(op), 0) FROM journal").fetchone()
        return int(row[0])

    def read(self, after_op: int) -> Iterator[tuple[int, bytes]]:
        expected = after_op + 1
        while True:
            rows = self._db.execute(
                "SELECT op, checksum, payload FROM journal WHERE op >= ? ORDER BY op LIMIT ?",
                (expected, READ_BATCH_RECORDS),
            ).fetchall()
            if not rows:
                return
            for op, crc, payload in rows:
                _check_record(expected, op, crc, payload)
                yield op, bytes(payload)
                expected += 1

    def close(self) -> None:
        self._db.close()


class PostgresJournal:
    """Journal in a PostgreSQL table (one row per group commit, committed before answering).

    Holds a session advisory lock for the journal's identity, so two ledger processes can
    never write one journal.
    """

    def __init__(self, url: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        kwargs: dict[str, Any] = {
            "host": parsed.host,
            "port": parsed.port,
            "user": parsed.username,
            "password": parsed.password,
            "dbname": parsed.database,
        }
        for key, value in parsed.query.items():
            kwargs[key] = value if isinstance(value, str) else value[-1]
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            self._db = psycopg.connect(autocommit=True, **kwargs)
        except psycopg.Error as error:
            raise JournalUnavailableError(
                f"cannot connect to the PostgreSQL journal: {error}"
            ) from error
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS puhui_journal_meta"
            " (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS puhui_journal ("
            " op BIGINT PRIMARY KEY, checksum BIGINT NOT NULL, payload BYTEA NOT NULL)"
        )
        self._db.execute(
            "INSERT INTO puhui_journal_meta (key, value) VALUES ('identity', %s)"
            " ON CONFLICT (key) DO NOTHING",
            (str(uuid.uuid4()),),
        )
        row = self._db.execute(
            "SELECT value FROM puhui_journal_meta WHERE key = 'identity'"
        ).fetchone()
        assert row is not None
        self.identity = str(row[0])
        lock_key = int.from_bytes(uuid.UUID(self.identity).bytes[:8], "little", signed=True)
        locked = self._db.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,)).fetchone()
        if not locked or not locked[0]:
            self._db.close()
            raise LedgerLockedError("another process has this PostgreSQL journal open")

    def append(self, op: int, payload: bytes) -> None:
        import psycopg

        try:
            self._db.execute(
                "INSERT INTO puhui_journal (op, checksum, payload) VALUES (%s, %s, %s)",
                (op, checksum(payload), payload),
            )
        except psycopg.Error as error:
            raise JournalUnavailableError(f"journal append failed: {error}") from error

    def last_op(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(op), 0) FROM puhui_journal").fetchone()
        assert row is not None
        return int(row[0])

    def read(self, after_op: int) -> Iterator[tuple[int, bytes]]:
        expected = after_op + 1
        while True:
            rows = self._db.execute(
                "SELECT op, checksum, payload FROM puhui_journal"
                " WHERE op >= %s ORDER BY op LIMIT %s",
                (expected, READ_BATCH_RECORDS),
            ).fetchall()
            if not rows:
                return
            for op, crc, payload in rows:
                _check_record(expected, op, crc, payload)
                yield op, bytes(payload)
                expected += 1

    def close(self) -> None:
        self._db.close()


def _check_record(expected: int, op: int, crc: int, payload: bytes) -> None:
    if op != expected:
        raise JournalCorruptError(f"journal has a gap: expected op {expected}, found {op}")
    if checksum(bytes(payload)) != crc:
        raise JournalCorruptError(f"journal record {op} fails its checksum")


def open_journal(url: str) -> Journal:
    """Open the journal named by a path, ``sqlite:///path`` or ``postgresql+psycopg://...``."""
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return PostgresJournal(url.replace("postgresql+psycopg://", "postgresql://", 1))
    if url.startswith("sqlite:///"):
        return SqliteJournal(Path(url.removeprefix("sqlite:///")))
    if "://" in url:
        raise JournalUnavailableError(
            f"unsupported journal URL scheme in {url.split('://', maxsplit=1)[0]!r}"
        )
    return SqliteJournal(Path(url))
