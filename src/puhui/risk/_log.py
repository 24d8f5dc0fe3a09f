"""The decision log: every batch risk decided, with the events, the decisions and the feature
values they used, appended to checksummed segment files.

It is the audit trail (any decision can be explained later from the values it saw), the
event source that rebuilds the in-memory feature state after a restart (snapshot + replay
of what came after it), and the input of backtests (a candidate ruleset is evaluated on the
stored feature values, exactly as they were).

Record layout: ``MAGIC`` (4 bytes), body length (u32 LE), CRC-32 of the body (u32 LE), then
the body: a JSON header (the record's metadata, and each column's name, numpy dtype, shape
and byte count) behind its length (u32 LE), then the columns' bytes back to back (strings as
numpy unicode or bytes arrays; never Python objects, never pickles). A crash
can leave a torn record at the end of the last segment: opening the log cuts it off (it was
never acknowledged as written); a bad record anywhere else (followed by more records, or in
an earlier segment) is corruption and an error.

Durability: a record is written to the file (the operating system has it) before ``append``
returns; the log's thread ``fdatasync``s within ``sync_interval_s`` of a write, off the
writer's path, and ``flush``/``close`` sync at once. The money side does not depend on the
log: each operation stores its own decision, score and reasons in its SQL row; what a crash
of the machine may lose is the last fraction of a second of audit detail and feature
history (a crash of the process loses nothing appended).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from puhui.errors import PuhuiError

MAGIC: Final = b"PRDL"
HEADER: Final = struct.Struct("<4sII")
SEGMENT_BYTES_DEFAULT: Final = 64 * 1024 * 1024
SYNC_INTERVAL_S_DEFAULT: Final = 0.1
RECORD_BYTES_MAX: Final = 1 << 30


class DecisionLogCorruptError(PuhuiError):
    """A record before the end of the log fails its checksum or cannot be read."""

    code = "risk_log_corrupt"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One appended batch: its columns (equal lengths) and its metadata."""

    meta: dict[str, Any]
    columns: dict[str, npt.NDArray[Any]]
    segment: int
    offset: int

    @property
    def rows(self) -> int:
        return int(self.meta.get("rows", 0))

    def row_columns(self) -> dict[str, npt.NDArray[Any]]:
        """The columns with one value per row (``columns`` without the record's blobs)."""
        blobs = set(self.meta.get("blobs", ()))
        return {name: column for name, column in self.columns.items() if name not in blobs}


def _segment_name(number: int) -> str:
    return f"decisions-{number:08d}.log"


def _encode(columns: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any]) -> bytes:
    """Body: header length (u32 LE), a JSON header (the metadata, and each array's name,
    dtype, shape and byte count), then the arrays' bytes back to back (C order)."""
    return b"".join(_encoded_parts(columns, meta)[0])


def _encoded_parts(
    columns: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any]
) -> tuple[list[bytes | memoryview], int]:
    """A record as ``_encode`` lays it out, in parts (the arrays' own memory, not copies),
    and its length: a batch's columns are megabytes, copied twice by joining them."""
    arrays = []
    chunks: list[memoryview] = []
    for name, column in columns.items():
        array = np.ascontiguousarray(column)
        if array.dtype.hasobject:
            raise ValueError(f"column {name!r} holds Python objects")
        data = array.reshape(-1).view(np.uint8).data if array.nbytes else memoryview(b"")
        arrays.append([name, array.dtype.str, list(array.shape), data.nbytes])
        chunks.append(data)
    header = json.dumps({"meta": meta, "arrays": arrays}).encode()
    start = struct.pack("<I", len(header)) + header
    length = len(start) + sum(chunk.nbytes for chunk in chunks)
    crc = zlib.crc32(start)
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return [HEADER.pack(MAGIC, length, crc) + start, *chunks], HEADER.size + length


def _decode(body: bytes) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    (size,) = struct.unpack_from("<I", body, 0)
    header = json.loads(body[4 : 4 + size].decode())
    offset = 4 + size
    columns: dict[str, npt.NDArray[Any]] = {}
    for name, dtype, shape, nbytes in header["arrays"]:
        kind = np.dtype(dtype)
        if kind.hasobject:
            raise ValueError(f"column {name!r} declares Python objects")
        count = nbytes // kind.itemsize if kind.itemsize else 0
        array = np.frombuffer(body, dtype=kind, count=count, offset=offset)
        columns[name] = array.reshape(shape).copy()
        offset += nbytes
    return dict(header["meta"]), columns


class DecisionLog:
    """An append-only log of decided batches in ``directory`` (one writer at a time)."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = SEGMENT_BYTES_DEFAULT,
        sync_interval_s: float = SYNC_INTERVAL_S_DEFAULT,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.sync_interval_s = sync_interval_s
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        numbers = _segment_numbers(self.directory)
        self._number = numbers[-1] if numbers else 1
        path = directory / _segment_name(self._number)
        end, self._next_id = self._scan_tail(path, numbers)
        self._file = path.open("ab")
        if self._file.tell() != end:  # a torn record at the tail: cut it off
            self._file.truncate(end)
            self._file.seek(end)
            os.fsync(self._file.fileno())
        self._written = 0
        """Records written (to the OS) since opening; ``_synced`` of them are durable."""
        self._synced = 0
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None

    def _scan_tail(self, path: Path, numbers: list[int]) -> tuple[int, int]:
        """Where the last segment's good records end, and the next decision id."""
        next_id = 1
        for number in numbers:
            last = number == numbers[-1]
            end = 0
            for record, record_end in _read_segment(self.directory, number, tolerate_tail=last):
                next_id = int(record.meta["first_id"]) + record.rows
                end = record_end
            if last:
                return end, next_id
        return 0, next_id

    @property
    def next_id(self) -> int:
        """The id the next decision will get (ids are dense, from 1)."""
        return self._next_id

    def append(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        meta: Mapping[str, Any],
        *,
        blobs: Mapping[str, npt.NDArray[np.uint8]] | None = None,
    ) -> int:
        """Append one batch; returns the id of its first decision (the others follow).

        ``columns`` hold one value per row; ``blobs`` are byte arrays of any length stored
        beside them (the bytes of a ragged column whose per-row ends are a column), listed
        in the record's ``meta["blobs"]``."""
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError("every column of a record has one value per row")
        rows = lengths.pop() if lengths else 0
        arrays = dict(columns)
        record_meta = {**meta, "rows": rows}
        if blobs:
            for name, blob in blobs.items():
                if name in arrays or blob.dtype != np.uint8 or blob.ndim != 1:
                    raise ValueError(f"blob {name!r} must be a new name and one-dimensional bytes")
                arrays[name] = blob
            record_meta["blobs"] = sorted(blobs)
        with self._lock:
            first = self._next_id
            parts, size = _encoded_parts(arrays, {**record_meta, "first_id": first})
            if size > RECORD_BYTES_MAX:
                raise ValueError("a decision log record is limited to 1 GiB")
            if self._file.tell() > 0 and self._file.tell() + size > self.segment_bytes:
                self._rotate()
            for part in parts:
                self._file.write(part)
            self._file.flush()
            self._written += 1
            if self._syncer is None and not self._stop.is_set():
                self._syncer = threading.Thread(
                    target=self._sync_in_background, name="decision-log-sync", daemon=True
                )
                self._syncer.start()
            self._pending.set()
            self._next_id = first + rows
            return first

    def _sync(self) -> None:
        """Make every record written so far durable (the lock held)."""
        if self._synced < self._written:
            os.fdatasync(self._file.fileno())
            self._synced = self._written

    def _sync_in_background(self) -> None:
        """The syncer thread: ``fdatasync`` within ``sync_interval_s`` of a write, off the
        caller's path (the write itself happened before ``append`` returned)."""
        last = time.monotonic()
        while True:
            self._pending.wait()
            if self._stop.is_set():
                return
            # Group the writes of one interval in one sync.
            self._stop.wait(max(0.0, last + self.sync_interval_s - time.monotonic()))
            with self._lock:
                self._pending.clear()
                if self._file.closed or self._synced >= self._written:
                    if self._stop.is_set():
                        return
                    continue
                target = self._written
                fd = os.dup(self._file.fileno())  # the file may rotate while we sync
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            with self._lock:
                self._synced = max(self._synced, target)
            last = time.monotonic()
            if self._stop.is_set():
                return

    def _rotate(self) -> None:
        self._sync()
        self._file.close()
        self._number += 1
        self._file = (self.directory / _segment_name(self._number)).open("ab")
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def flush(self) -> None:
        """Make everything appended so far durable."""
        with self._lock:
            self._sync()

    def close(self) -> None:
        self._stop.set()
        self._pending.set()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join()
        with self._lock:
            if not self._file.closed:
                self._sync()
                self._file.close()

    # --- reading ------------------------------------------------------------------------------

    def records(self, since_id: int = 1) -> Iterator[LogRecord]:
        """Every record holding a decision with id ``since_id`` or later, in order."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()
        yield from read_records(self.directory, since_id)


def _read_segment(
    directory: Path, number: int, *, tolerate_tail: bool
) -> Iterator[tuple[LogRecord, int]]:
    path = directory / _segment_name(number)
    if not path.exists():
        return
    with path.open("rb") as f:
        data = f.read()
    offset = 0
    while offset < len(data):
        problem = ""
        length = 0
        if len(data) - offset < HEADER.size:
            problem = "a truncated header"
        else:
            magic, length, crc = HEADER.unpack_from(data, offset)
            body = data[offset + HEADER.size : offset + HEADER.size + length]
            if magic != MAGIC:
                problem = "a bad record marker"
            elif len(body) < length:
                problem = "a truncated record"
            elif zlib.crc32(body) != crc:
                problem = "a checksum mismatch"
        if problem:
            torn = problem.startswith("a truncated") or (
                offset + HEADER.size + length >= len(data)  # the last record, cut short
            )
            if tolerate_tail and torn:
                return  # a torn write at the end: never acknowledged
            raise DecisionLogCorruptError(f"{path.name} at byte {offset}: {problem}")
        try:
            meta, columns = _decode(body)
        except (ValueError, OSError, KeyError) as error:
            raise DecisionLogCorruptError(f"{path.name} at byte {offset}: {error}") from None
        end = offset + HEADER.size + length
        yield LogRecord(meta, columns, number, offset), end
        offset = end


def _segment_numbers(directory: Path) -> list[int]:
    found = []
    for path in directory.glob("decisions-*.log"):
        stem = path.stem.removeprefix("decisions-")
        if stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def schema_path(directory: Path, schema: str) -> Path:
    """Where the log in ``directory`` keeps the feature names of schema ``schema`` (a hash
    of them, the ``schema`` of each record's metadata)."""
    return directory / f"schema-{schema}.json"


def feature_names(directory: Path, record: LogRecord) -> list[str]:
    """The names of ``record``'s feature columns, in order."""
    names: list[str] = json.loads(schema_path(directory, str(record.meta["schema"])).read_text())
    return names


def read_records(directory: Path, since_id: int = 1) -> Iterator[LogRecord]:
    """Every record of the log in ``directory`` holding a decision with id ``since_id`` or
    later, in order, read only: the log may belong to a running engine (a server), whose
    record being written is left alone — opening a ``DecisionLog`` would cut it off as torn.
    """
    numbers = _segment_numbers(directory)
    for number in numbers:
        tolerate = number == numbers[-1]
        for record, _ in _read_segment(directory, number, tolerate_tail=tolerate):
            if int(record.meta["first_id"]) + record.rows > since_id:
                yield record
