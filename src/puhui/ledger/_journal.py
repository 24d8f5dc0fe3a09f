"""The journal: the durable, append-only record of every batch the ledger accepted.

A journal is a port with two adapters here: SQLite (the embedded default) and PostgreSQL.
Each record is one group commit: an operation number (1, 2, 3, ... with no gaps), a CRC-32 of
the payload, and the payload (see ``encode_group``). ``append`` returns only once the record is
durable (SQLite WAL with ``synchronous=FULL``; PostgreSQL commit with ``synchronous_commit``).

A journal also carries an identity (a UUID made when it is created): snapshots record the
identity of the journal they were taken from and are ignored for any other journal.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import sqlite3
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._errors import JournalCorruptError, JournalUnavailableError, LedgerLockedError
from ._os import fsync_path, lower_io_priority, write_durably
from ._types import ACCOUNT_DTYPE, TRANSFER_DTYPE

log = logging.getLogger("puhui.ledger")

ENTRY_HEADER = struct.Struct("<BxxxIQ")  # kind, count (events, or pulse limit), now
READ_BATCH_RECORDS = 64


class Journal(Protocol):
    identity: str

    def append(self, op: int, payload: bytes) -> int:
        """Append record ``op`` durably; returns its payload's ``checksum``."""
        ...

    def last_op(self) -> int: ...

    def read(self, after_op: int) -> Iterator[tuple[int, bytes]]: ...

    def mark_durable(self, op: int) -> None:
        """Records up to ``op`` were acknowledged and counted by a snapshot: a journal found
        without one of them later is corrupt, not shorter (the file journal keeps it in its
        checkpoint; a database keeps its commits by itself)."""
        ...

    def known_checksum(self, op: int) -> int | None:
        """The checksum of record ``op`` if opening already read it (else None: read it)."""
        ...

    def check_unread(self, stop: threading.Event | None = None) -> None:
        """Check the records opening did not read (any thread; raises
        ``JournalCorruptError``): the file journal's segments wholly below its checkpoint's
        durable op. Returns early once ``stop`` is set."""
        ...

    def bytes_after(self, op: int) -> int | None:
        """At most how many bytes the records after ``op`` take (a replay's size, known
        ahead: the engine makes room once); None if not known without reading them."""
        ...

    def close(self) -> None: ...


Entry = tuple[int, int, np.ndarray[Any, Any] | None]  # kind, now, events (None for a pulse)


def encode_group(entries: list[tuple[int, int, int, bytes | memoryview]]) -> bytes:
    """Entries of (kind, count, now, event bytes) -> one record payload."""
    parts: list[bytes | memoryview] = []
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
    """Journal in a SQLite file (WAL, ``synchronous=FULL``): one row per group commit.

    Locked to one opener (``flock`` of ``<file>-lock`` beside it, as the file journal locks
    its directory): two ledgers with their own state directories over one journal would each
    number records from their own state. (Not a lock of the database file itself: closing
    any descriptor of it would drop SQLite's own POSIX locks in this process.)
    """

    def __init__(self, path: Path) -> None:
        import fcntl

        self._lock_fd = -1
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(path.with_name(path.name + "-lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise JournalUnavailableError(
                f"cannot open the SQLite journal {path}: {error.strerror or error}"
            ) from error
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(lock_fd)
            raise LedgerLockedError(f"journal {path} is open in another process") from error
        self._lock_fd = lock_fd
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            self._unlock()
            raise JournalUnavailableError(
                f"cannot open the SQLite journal {path}: {error}"
            ) from error
        self.path = path
        try:
            self._init()
        except sqlite3.DatabaseError as error:
            self._db.close()
            self._unlock()
            raise JournalUnavailableError(
                f"{path} is not a usable SQLite journal: {error}"
            ) from error

    def _unlock(self) -> None:
        import fcntl

        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _init(self) -> None:
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

    def append(self, op: int, payload: bytes) -> int:
        crc = checksum(payload)
        try:
            self._db.execute(
                "INSERT INTO journal (op, checksum, payload) VALUES (?, ?, ?)",
                (op, crc, payload),
            )
        except sqlite3.Error as error:
            raise JournalUnavailableError(f"journal append failed: {error}") from error
        return crc

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

    def mark_durable(self, op: int) -> None:
        """Nothing to record: SQLite keeps every committed row (``synchronous=FULL``)."""

    def known_checksum(self, op: int) -> int | None:
        return None

    def check_unread(self, stop: threading.Event | None = None) -> None:
        """Nothing unread: opening reads no record (each is checked as replay reads it)."""

    def bytes_after(self, op: int) -> int | None:
        return None

    def close(self) -> None:
        self._db.close()
        self._unlock()


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
        # A commit is durable on return unless the session runs with ``synchronous_commit =
        # off`` (a server, database or role setting, or the URL's options): then a crash of
        # the server loses commits already acknowledged. Any other level flushes locally.
        setting = self._db.execute("SHOW synchronous_commit").fetchone()
        if setting is None or setting[0] == "off":
            self._db.execute("SET synchronous_commit = on")
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

    def append(self, op: int, payload: bytes) -> int:
        import psycopg

        crc = checksum(payload)
        try:
            self._db.execute(
                "INSERT INTO puhui_journal (op, checksum, payload) VALUES (%s, %s, %b)",
                (op, crc, payload),
            )
        except psycopg.Error as error:
            raise JournalUnavailableError(f"journal append failed: {error}") from error
        return crc

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

    def mark_durable(self, op: int) -> None:
        """Nothing to record: PostgreSQL keeps every committed row."""

    def known_checksum(self, op: int) -> int | None:
        return None

    def check_unread(self, stop: threading.Event | None = None) -> None:
        """Nothing unread: opening reads no record (each is checked as replay reads it)."""

    def bytes_after(self, op: int) -> int | None:
        return None

    def close(self) -> None:
        self._db.close()


class FileJournal:
    """Journal in pre-allocated, checksummed segment files, synced with ``fdatasync``.

    A directory of segments ``<first op>.seg``, each allocated at its full size before use
    (``fallocate``), so an append never grows the file and a sync flushes only the data and
    the extent's written mark. The next segment is allocated in the background while the
    current one fills. (Writing the zeros out instead would save that mark but costs a
    segment's worth of disk bandwidth at a time, which showed as 40 ms syncs at p99.)
    A record is a 32-byte header (magic, op, payload length, CRC-32 of the payload, CRC-32 of
    the header) and the payload, padded to 8 bytes.

    On open the segments are scanned: a zero header ends the journal (unless a record follows
    it); a damaged record at the very end of the last segment with a sector of it unwritten
    is a torn write that was never acknowledged (it is wiped); a damaged record anywhere
    else, or one written whole, is corruption (``journal_corrupt``), as is a journal whose
    first segment does not start at op 1.

    A small ``checkpoint`` file (JSON with a CRC-32, replaced atomically and synced) records
    what the segments alone cannot show: each segment's allocated size (written as the
    segment is put to use, on a thread of its own: three syncs on the append path at each
    rollover showed in the benchmark; a crash before it is written leaves only that segment
    unchecked, never a false alarm) and the op up to which the records are known to be
    durable (``mark_durable``: the ledger's snapshots). A segment it lists that is
    missing or shorter, or a journal ending before that op, is ``journal_corrupt``: records
    lost after they were acknowledged (a copy cut short, a partial restore), not a torn
    write. A journal written before the checkpoint existed opens as before and gains one.
    """

    HEADER = struct.Struct("<IIQQII")  # magic, reserved, op, length, payload crc, header crc
    MAGIC = 0x50554A31  # "PUJ1"
    SEGMENT_BYTES = 256 << 20
    """Largest segment; the first is 4 MiB and each next one twice the last, up to this."""
    FIRST_SEGMENT_BYTES = 4 << 20
    CHECKPOINT_FORMAT = 1

    def __init__(self, directory: Path, *, segment_bytes: int | None = None) -> None:
        import fcntl

        self.directory = directory
        self.segment_bytes_max = segment_bytes or self.SEGMENT_BYTES
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:  # a file in the way, no permission, a read-only file system
            raise JournalUnavailableError(
                f"cannot create the journal directory {directory}: {error.strerror or error}"
            ) from error
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self._lock_fd)
            raise LedgerLockedError(f"journal {directory} is open in another process") from error
        self.identity = ""
        self._segments: list[tuple[int, Path]] = []
        self._fd = -1
        self._direct_fd = -1
        self._tail = b""
        self._staging: mmap.mmap | None = None
        self._read_buffer: mmap.mmap | None = None
        self._segment_first = 0
        self._segment_size = 0
        self._offset = 0
        self.bytes_appended = 0
        """Bytes appended since this journal was opened (records with headers and padding)."""
        self._last_op = 0
        self._spare: tuple[Path, int] | None = None
        self._spare_lock = threading.Lock()
        self._spare_thread: threading.Thread | None = None
        self._spare_failed = 0
        """The first op of the segment during which preparing the next one failed."""
        self._checkpoint_lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        """Each segment's allocated size, by first op (as the checkpoint records them)."""
        self._durable_op = 0
        self._recorded: tuple[int, tuple[tuple[int, int], ...]] | None = None
        """What the checkpoint file holds (durable op, segment sizes); None: no file."""
        self._checkpoint_thread: threading.Thread | None = None
        self._unread: dict[int, tuple[Path, int]] = {}
        """Segments opening did not read (first op: path, the next segment's first op): every
        record of them at or below the checkpoint's durable op, checked since by no
        ``check_unread`` or ``read``."""
        self._known: dict[int, int] = {}
        """Checksums of records opening read: the durable op's and the last one's."""
        try:
            meta = directory / "identity"
            identity = meta.read_text().strip() if meta.exists() else ""
            if not identity:  # new, or left empty by a crash before its bytes were durable
                identity = str(uuid.uuid4())
                write_durably(meta, identity.encode())
            self.identity = identity
            self._segments = sorted(
                (int(p.stem), p) for p in directory.glob("*.seg") if p.stem.isdigit()
            )
            self._scan(self._read_checkpoint())
        except BaseException:
            self.close()  # the lock too: a retry, or a repair, must not find it held
            raise

    # --- opening ----------------------------------------------------------------------------

    def _read_checkpoint(self) -> tuple[int, dict[int, int]] | None:
        """(durable op, segment sizes by first op) from the checkpoint; None without one (a
        journal written before it existed)."""
        try:
            text = (self.directory / "checkpoint").read_bytes()
        except FileNotFoundError:
            return None
        try:
            content = json.loads(text)
            body = {key: value for key, value in content.items() if key != "crc"}
            valid = (
                content["format"] == self.CHECKPOINT_FORMAT
                and zlib.crc32(_canonical(body)) == content["crc"]
            )
            durable_op = int(content["durable_op"])
            sizes = {int(first): int(size) for first, size in content["segments"]}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise JournalCorruptError(f"journal checkpoint cannot be read: {error}") from error
        if not valid:
            raise JournalCorruptError("journal checkpoint fails its checksum")
        self._recorded = (durable_op, tuple(sorted(sizes.items())))
        return durable_op, sizes

    def _write_checkpoint(self, durable_op: int) -> None:
        """Record the segments' sizes and ``durable_op`` (never lowered), if they changed."""
        with self._checkpoint_lock:
            durable_op = max(durable_op, self._durable_op)
            segments = tuple(sorted(self._sizes.items()))
            if self._recorded == (durable_op, segments):
                return
            body = {
                "format": self.CHECKPOINT_FORMAT,
                "durable_op": durable_op,
                "segments": [list(segment) for segment in segments],
            }
            content = dict(body, crc=zlib.crc32(_canonical(body)))
            write_durably(self.directory / "checkpoint", json.dumps(content).encode())
            self._durable_op = durable_op
            self._recorded = (durable_op, segments)

    def _scan(self, checkpoint: tuple[int, dict[int, int]] | None) -> None:
        """Find the end of the journal, checking every record it reads (and the segments
        against the checkpoint). A segment whose records are all at or below the checkpoint's
        durable op (the next segment starts at or before the op after it) is not read: a
        snapshot counted its records, so the ledger does not replay them; its size was checked
        against the checkpoint, and its records are checked by ``check_unread`` (the ledger
        runs it in the background after opening) and by any ``read`` that reaches them."""
        last_op = 0
        if self._segments and self._segments[0][0] != 1:
            # Segments are never removed: a journal starts at op 1, whatever its segments.
            raise JournalCorruptError(
                f"journal segment {self._segments[0][1].name} is the first: the ops before"
                f" {self._segments[0][0]} are missing"
            )
        durable_op, sizes = checkpoint if checkpoint is not None else (0, {})
        present = dict(self._segments)
        for first, size in sorted(sizes.items()):
            # A segment is listed only once it exists durably (made, directory synced): a
            # segment listed is one whose records may have been acknowledged.
            if first not in present:
                raise JournalCorruptError(
                    f"journal segment {first:020d}.seg is missing: the ops from {first} on"
                    " it held are lost"
                )
            found = present[first].stat().st_size
            if found < size:
                raise JournalCorruptError(
                    f"journal segment {present[first].name} is shorter ({found} bytes) than"
                    f" it was made ({size}): its tail, and the records in it, are lost"
                )
        self._sizes = {
            first: sizes.get(first, path.stat().st_size) for first, path in self._segments
        }
        last_read = (0, 0)  # op, checksum of the last record read
        for index, (first, path) in enumerate(self._segments):
            last_segment = index == len(self._segments) - 1
            following = None if last_segment else self._segments[index + 1][0]
            if following is not None and following <= durable_op + 1 and first in sizes:
                self._unread[first] = (path, following)
                last_op = following - 1
                continue
            offset = 0
            data = self._read_segment(path)
            expected = first
            while offset + self.HEADER.size <= len(data):
                header = data[offset : offset + self.HEADER.size]
                if header == bytes(self.HEADER.size):
                    if last_segment and self._record_follows(data, offset):
                        # A hole before acknowledged records (a lost or misdirected write),
                        # not the end of the journal.
                        raise JournalCorruptError(
                            f"journal record at {path.name}:{offset} is missing"
                        )
                    break
                magic, _, op, length, crc, header_crc = self.HEADER.unpack(header)
                ok = (
                    magic == self.MAGIC
                    and zlib.crc32(header[:-4]) == header_crc
                    and op == expected
                    and offset + self.HEADER.size + length <= len(data)
                    and zlib.crc32(
                        data[offset + self.HEADER.size : offset + self.HEADER.size + length]
                    )
                    == crc
                )
                if not ok:
                    if expected <= durable_op:
                        raise JournalCorruptError(
                            f"journal record {expected} at {path.name}:{offset} is damaged;"
                            f" the records up to {durable_op} were durable"
                        )
                    if last_segment and self._is_torn_tail(data, offset):
                        # The final write never completed, so it was never acknowledged.
                        # Wipe it so that appends go on from here.
                        self._wipe(path, offset, len(data) - offset)
                        break
                    raise JournalCorruptError(f"journal record at {path.name}:{offset} is damaged")
                last_op = op
                last_read = (op, crc)
                if op == durable_op:
                    self._known[op] = crc
                expected += 1
                offset += _padded(self.HEADER.size + length)
            if last_segment:
                self._open_segment(first, path, offset)
            elif expected != self._segments[index + 1][0]:
                raise JournalCorruptError(f"journal segment {path.name} ends early")
        if last_op < durable_op:
            raise JournalCorruptError(
                f"journal ends at op {last_op}, but the records up to {durable_op} were durable"
                " (a segment lost its records)"
            )
        self._last_op = last_op
        self._durable_op = durable_op
        if last_read[0] == last_op:
            self._known[last_op] = last_read[1]
        if self._fd < 0:
            self._open_segment(1, self._prepare_segment(1, 0), 0)
        self._write_checkpoint(durable_op)

    RECORD_BYTES_MAX = 64 << 20
    """No record is larger (a group commit holds at most 65,512 events of 128 bytes)."""

    def _read_segment(self, path: Path) -> memoryview:
        """A whole segment, read with ``O_DIRECT`` into a buffer the next call reuses (valid
        until then). Through the page cache, reading 1.5 GB of journal on recovery cost
        seconds of fresh pages on this project's virtual machine, twice (scan, then replay).
        """
        data, self._read_buffer = _read_whole(path, self._read_buffer, self._segment_bytes_seen)
        return data

    def _segment_bytes_seen(self) -> int:
        """The largest segment on disk (so one read buffer fits them all)."""
        sizes = [p.stat().st_size for _, p in self._segments if p.exists()]
        return -(-max(sizes, default=1) // _BLOCK) * _BLOCK

    def bytes_after(self, op: int) -> int:
        """The segments' bytes from the one holding the record after ``op`` on (whole
        segments: their sizes, the last one up to its end): what a replay from ``op`` reads
        at most, known without reading it (an excess of at most the first segment's)."""
        total = 0
        for index, (first, path) in enumerate(self._segments):
            following = self._segments[index + 1][0] if index + 1 < len(self._segments) else None
            if following is None:
                total += self._offset
            elif following > op + 1:
                total += self._sizes.get(first) or path.stat().st_size
        return total

    def known_checksum(self, op: int) -> int | None:
        """The checksum of record ``op`` if opening read it: the checkpoint's durable op
        (the op of the ledger's newest snapshot) and the last op. None for any other."""
        return self._known.get(op)

    def check_unread(self, stop: threading.Event | None = None) -> None:
        """Check every record of the segments opening did not read (any thread, its own
        buffer, idle I/O priority to be asked by the caller): each record whole, its checksum,
        ops without a gap up to the next segment's first. Every such record was durable, so
        any damage is ``journal_corrupt``. Returns early once ``stop`` is set."""
        buffer: mmap.mmap | None = None
        try:
            for first, (path, following) in list(self._unread.items()):
                if stop is not None and stop.is_set():
                    return
                try:
                    data, buffer = _read_whole(path, buffer, lambda: 0)
                except OSError as error:
                    raise JournalCorruptError(
                        f"journal segment {path.name} cannot be read: {error}"
                    ) from error
                expected = self._check_records(path, data, first)
                del data
                if expected != following:
                    raise JournalCorruptError(
                        f"journal segment {path.name} ends early: the ops {expected} to"
                        f" {following - 1} are missing, but the records up to"
                        f" {self._durable_op} were durable"
                    )
                self._unread.pop(first, None)
        finally:
            if buffer is not None:
                with contextlib.suppress(BufferError):
                    buffer.close()

    def _check_records(self, path: Path, data: memoryview, first: int) -> int:
        """Check the records of a segment opening did not read; returns the op after its
        last. A zero header ends it; any record damaged or out of order is corruption."""
        expected = first
        offset = 0
        while offset + self.HEADER.size <= len(data):
            header = data[offset : offset + self.HEADER.size]
            if header == bytes(self.HEADER.size):
                break
            magic, _, op, length, crc, header_crc = self.HEADER.unpack(header)
            start = offset + self.HEADER.size
            if not (
                magic == self.MAGIC
                and zlib.crc32(header[:-4]) == header_crc
                and op == expected
                and start + length <= len(data)
                and zlib.crc32(data[start : start + length]) == crc
            ):
                raise JournalCorruptError(
                    f"journal record {expected} at {path.name}:{offset} is damaged; the"
                    f" records up to {self._durable_op} were durable"
                )
            expected += 1
            offset += _padded(self.HEADER.size + length)
        return expected

    def _drop_read_buffer(self) -> None:
        if self._read_buffer is not None:
            with contextlib.suppress(BufferError):  # a caller still holds a record's view
                self._read_buffer.close()
            self._read_buffer = None

    def _is_torn_tail(self, data: bytes | memoryview, offset: int) -> bool:
        """Whether the damaged record at ``offset`` is the last write, never completed.

        Nothing may follow it: no valid record header after it, and only zeros beyond the
        farthest byte it could have covered. And with its header whole, a part of it must
        still read as zeros (a sector never written: a disk writes a sector whole or not at
        all): a record whose every sector was written but fails its checksum was damaged
        after it was acknowledged.
        """
        header = data[offset : offset + self.HEADER.size]
        magic, _, _, length, _, header_crc = self.HEADER.unpack(header)
        if magic == self.MAGIC and zlib.crc32(header[:-4]) == header_crc:
            reach = offset + _padded(self.HEADER.size + length)
            end = offset + self.HEADER.size + length
            if end <= len(data) and not _sector_unwritten(data, offset, end):
                return False
        else:
            reach = offset + self.RECORD_BYTES_MAX
        if self._record_follows(data, offset):
            return False
        beyond = np.frombuffer(data, dtype=np.uint8, offset=min(reach, len(data)))
        return not beyond.any()

    def _record_follows(self, data: bytes | memoryview, offset: int) -> bool:
        """Whether a valid record header lies after ``offset`` (records are 8-byte aligned)."""
        words = np.frombuffer(data, dtype=np.uint8, offset=offset + 8)
        aligned = words[: (words.shape[0] // 8) * 8].view("<u4")[::2]
        for index in np.flatnonzero(aligned == self.MAGIC).tolist():
            at = offset + 8 + index * 8
            candidate = data[at : at + self.HEADER.size]
            if len(candidate) == self.HEADER.size and zlib.crc32(candidate[:-4]) == int.from_bytes(
                candidate[-4:], "little"
            ):
                return True
        return False

    def _wipe(self, path: Path, offset: int, length: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes(min(length, self.RECORD_BYTES_MAX)), offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _next_size(self) -> int:
        return min(self.segment_bytes_max, self.FIRST_SEGMENT_BYTES << len(self._segments))

    def _prepare_segment(self, first_op: int, least_bytes: int) -> Path:
        final = self.directory / f"{first_op:020d}.seg"
        if self._spare_thread is not None:
            self._spare_thread.join()
        with self._spare_lock:
            spare = self._spare
            self._spare = None
        if spare is not None and spare[1] >= least_bytes:
            os.replace(spare[0], final)
        else:
            self._write_zeros(final, -(-max(self._next_size(), least_bytes) // _BLOCK) * _BLOCK)
        fsync_path(self.directory)
        return final

    def _record_segments(self) -> None:
        """Write the checkpoint with the new segment's size, in the background."""
        if self._checkpoint_thread is not None:
            self._checkpoint_thread.join()

        def record(durable_op: int) -> None:
            try:
                self._write_checkpoint(durable_op)
            except OSError as error:  # only this segment goes unchecked
                log.warning("journal: cannot record the new segment's size: %s", error)

        self._checkpoint_thread = threading.Thread(
            target=record, args=(self._last_op,), name="puhui-journal-checkpoint", daemon=True
        )
        self._checkpoint_thread.start()

    def _write_zeros(self, path: Path, size: int) -> None:
        """Allocate a zeroed segment (``fallocate``: blocks reserved, reads give zeros)."""
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        except OSError:
            tmp.unlink(missing_ok=True)  # a disk full: give back what it took
            raise
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _make_spare(self, size: int, first: int) -> None:
        """Zero-fill the next segment in the background (``spare.zero``)."""
        lower_io_priority()
        path = self.directory / "spare.zero"
        try:
            self._write_zeros(path, size)
        except OSError as error:
            # Not tried again for this segment; the rollover allocates in the foreground
            # and fails the append that needs it if the disk is still full.
            log.warning("journal: cannot prepare the next segment: %s", error)
            self._spare_failed = first
            return
        with self._spare_lock:
            self._spare = (path, size)

    def _open_segment(self, first: int, path: Path, offset: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1
        self._fd = os.open(path, os.O_RDWR)
        with contextlib.suppress(OSError, AttributeError):  # no O_DIRECT here: buffered writes
            self._direct_fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        self._segment_first = first
        self._segment_size = os.fstat(self._fd).st_size
        with self._checkpoint_lock:
            self._sizes.setdefault(first, self._segment_size)
        self._offset = offset
        # The start of the block the next record begins in: each write rewrites it whole.
        self._tail = os.pread(self._fd, offset % _BLOCK, offset - offset % _BLOCK)
        if (first, path) not in self._segments:
            self._segments.append((first, path))

    # --- the port ---------------------------------------------------------------------------

    def append(self, op: int, payload: bytes) -> int:
        if op != self._last_op + 1:
            raise JournalCorruptError(f"journal append of op {op} after {self._last_op}")
        size = _padded(self.HEADER.size + len(payload))
        if self._offset + size > self._segment_size:
            try:
                self._open_segment(op, self._prepare_segment(op, size), 0)
            except OSError as error:
                raise JournalUnavailableError(
                    f"journal append failed: no next segment: {error}"
                ) from error
            self._record_segments()
        if (
            self._offset * 2 > self._segment_size
            and self._spare is None
            and self._spare_failed != self._segment_first
            and (self._spare_thread is None or not self._spare_thread.is_alive())
        ):
            self._spare_thread = threading.Thread(
                target=self._make_spare,
                args=(self._next_size(), self._segment_first),
                daemon=True,
            )
            self._spare_thread.start()
        crc = checksum(payload)
        header = self.HEADER.pack(self.MAGIC, 0, op, len(payload), crc, 0)
        header = header[:-4] + zlib.crc32(header[:-4]).to_bytes(4, "little")
        try:
            if self._direct_fd < 0 or not self._append_direct(header, payload, size):
                os.pwritev(self._fd, [header, payload], self._offset)
            os.fdatasync(self._fd)
        except OSError as error:
            raise JournalUnavailableError(f"journal append failed: {error}") from error
        self._offset += size
        self._last_op = op
        self.bytes_appended += size
        return crc

    def _append_direct(self, header: bytes, payload: bytes, size: int) -> bool:
        """Write one record with ``O_DIRECT``, whole blocks from a reused buffer: no page
        cache (each fresh page of it cost ~5 µs on this project's virtual machine, and the
        copy into it a core's share), False if this file system refuses it.

        The record's first block starts with the bytes already written before it (kept in
        ``_tail``), rewritten unchanged; its last block is padded with zeros, which is what a
        reader of the journal finds beyond its end anyway.
        """
        head = len(self._tail)
        start = self._offset - head
        end = head + size
        length = -(-end // _BLOCK) * _BLOCK
        if self._staging is None or len(self._staging) < length:
            if self._staging is not None:
                self._staging.close()
            self._staging = mmap.mmap(-1, max(length, 1 << 20))
        buffer = memoryview(self._staging)
        buffer[:head] = self._tail
        buffer[head : head + len(header)] = header
        buffer[head + len(header) : head + len(header) + len(payload)] = payload
        zeros = length - (head + len(header) + len(payload))
        buffer[length - zeros : length] = bytes(zeros)
        try:
            written = os.pwrite(self._direct_fd, buffer[:length], start)
        except OSError as error:
            buffer.release()
            if error.errno != errno.EINVAL:
                raise
            os.close(self._direct_fd)  # O_DIRECT refused: buffered writes from now on
            self._direct_fd = -1
            return False
        tail_start = end - end % _BLOCK
        self._tail = bytes(buffer[tail_start:end])
        buffer.release()
        if written != length:
            raise OSError(f"journal short write ({written} of {length} bytes)")
        return True

    def last_op(self) -> int:
        return self._last_op

    def mark_durable(self, op: int) -> None:
        """Record in the checkpoint that the records up to ``op`` are durable (any thread).
        A failure to write it only leaves the older mark: it is logged, not raised."""
        if op > self._last_op:
            raise ValueError(f"op {op} is past the journal's end ({self._last_op})")
        try:
            self._write_checkpoint(op)
        except OSError as error:
            log.warning("journal: cannot record op %d as durable: %s", op, error)

    def read(self, after_op: int) -> Iterator[tuple[int, bytes]]:
        """The records after ``after_op``, each checked (header, checksum, no gap: the ops
        run on from segment to segment): a segment opening did not read is checked here as
        it is read. Segments wholly at or below ``after_op`` are not read; records at or
        below it are stepped over by their headers."""
        # Only records complete when the read starts: appends may go on meanwhile.
        last_op = self._last_op
        if after_op >= last_op:
            return
        expected = 0
        try:
            for index, (first, path) in enumerate(self._segments):
                following = (
                    self._segments[index + 1][0] if index + 1 < len(self._segments) else None
                )
                if following is not None and following <= after_op + 1:
                    continue
                if expected and first != expected:
                    raise JournalCorruptError(
                        f"journal segment {path.name} does not follow op {expected - 1}"
                    )
                expected = first
                data = self._read_segment(path)
                offset = 0
                while expected <= last_op and offset + self.HEADER.size <= len(data):
                    header = data[offset : offset + self.HEADER.size]
                    if header == bytes(self.HEADER.size):
                        break
                    magic, _, op, length, crc, header_crc = self.HEADER.unpack(header)
                    if magic != self.MAGIC or zlib.crc32(header[:-4]) != header_crc:
                        raise JournalCorruptError(
                            f"journal header at {path.name}:{offset} is damaged"
                        )
                    if op != expected:
                        raise JournalCorruptError(
                            f"journal record {expected} at {path.name}:{offset} is missing"
                            f" (op {op} found there)"
                        )
                    start = offset + self.HEADER.size
                    offset += _padded(self.HEADER.size + length)
                    expected += 1
                    if op <= after_op:
                        continue
                    payload = data[start : start + length]
                    if len(payload) != length or zlib.crc32(payload) != crc:
                        raise JournalCorruptError(f"journal record {op} fails its checksum")
                    yield op, bytes(payload)
                if expected > last_op:
                    return
                if following is None or expected != following:
                    raise JournalCorruptError(
                        f"journal segment {path.name} ends early: op {expected} is missing"
                    )
                if first > after_op:  # every record of it checked: none left unread
                    self._unread.pop(first, None)
        finally:
            self._drop_read_buffer()

    def close(self) -> None:
        import fcntl

        if self._spare_thread is not None:
            self._spare_thread.join()
        if self._checkpoint_thread is not None:
            self._checkpoint_thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1
        if self._staging is not None:
            self._staging.close()
            self._staging = None
        self._drop_read_buffer()
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


_READ_CHUNK = 8 << 20
"""Bytes per read when a segment is read whole (recovery, verification)."""
_BLOCK = 4096
"""Unit of ``O_DIRECT`` writes: offsets, lengths and buffer addresses are multiples of it."""


def _padded(size: int) -> int:
    return (size + 7) & ~7


def _read_whole(
    path: Path, buffer: mmap.mmap | None, capacity_least: Callable[[], int]
) -> tuple[memoryview, mmap.mmap]:
    """A whole file read with ``O_DIRECT`` (no page cache) into ``buffer``, or into a new
    buffer of at least ``capacity_least()`` bytes when it is too small (not closed here: views
    of the last file's records may still be alive; the old buffer goes with the last of them).
    Returns the bytes read (fewer than the file's size if it shrank meanwhile) and the buffer."""
    size = path.stat().st_size
    capacity = -(-max(size, 1) // _BLOCK) * _BLOCK
    if buffer is None or len(buffer) < capacity:
        buffer = mmap.mmap(-1, max(capacity, capacity_least()))
    window = memoryview(buffer)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except (OSError, AttributeError):  # no O_DIRECT here: a plain read
        fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < size:
            count = os.readv(fd, [window[done : min(done + _READ_CHUNK, capacity)]])
            if count <= 0:
                break
            done += count
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        os.lseek(fd, 0, os.SEEK_SET)  # O_DIRECT refused on read: a plain read
        with os.fdopen(os.dup(fd), "rb") as f:
            done = f.readinto(window[:size]) or 0
    finally:
        os.close(fd)
    return window[: min(done, size)], buffer


_SECTOR = 512
"""The unit a disk writes whole or not at all (the smallest there is)."""


def _sector_unwritten(data: bytes | memoryview, start: int, end: int) -> bool:
    """Whether some sector's share of bytes ``start``..``end`` is all zeros."""
    first = start - start % _SECTOR
    last = -(-end // _SECTOR) * _SECTOR
    window = np.zeros(last - first, np.uint8)
    window[start - first : end - first] = np.frombuffer(data, np.uint8, end - start, start)
    written = window.reshape(-1, _SECTOR).any(axis=1)
    return not bool(written.all())


def _canonical(body: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint's body its CRC-32 covers."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _check_record(expected: int, op: int, crc: int, payload: bytes) -> None:
    if op != expected:
        raise JournalCorruptError(f"journal has a gap: expected op {expected}, found {op}")
    if checksum(bytes(payload)) != crc:
        raise JournalCorruptError(f"journal record {op} fails its checksum")


SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
"""A plain path with one of these suffixes (or an existing file) is a SQLite journal; any
other plain path is a file-journal directory, the embedded default."""


def open_journal(url: str) -> Journal:
    """Open the journal named by ``url``.

    ``file:///dir`` or a plain directory path: the file journal (the embedded default);
    ``sqlite:///path`` or a path ending in ``.sqlite``/``.db`` (or an existing file): SQLite;
    ``postgresql+psycopg://user@host/db``: PostgreSQL.
    """
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return PostgresJournal(url.replace("postgresql+psycopg://", "postgresql://", 1))
    if url.startswith("sqlite:///"):
        return SqliteJournal(Path(url.removeprefix("sqlite:///")))
    if url.startswith("file://"):
        return FileJournal(Path(url.removeprefix("file://")))
    if "://" in url:
        raise JournalUnavailableError(
            f"unsupported journal URL scheme in {url.split('://', maxsplit=1)[0]!r}"
        )
    path = Path(url)
    if path.suffix in SQLITE_SUFFIXES or path.is_file():
        return SqliteJournal(path)
    return FileJournal(path)
