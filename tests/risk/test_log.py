"""The decision log: batches come back as written, in order, across segments and restarts; a
torn tail is cut off; corruption before the end is an error."""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from puhui.risk._engine import logged_reasons
from puhui.risk._log import DecisionLog, DecisionLogCorruptError, LogRecord, _encode


def _batch(n: int, start: int) -> dict[str, np.ndarray]:
    return {
        "at_ns": np.arange(start, start + n, dtype=np.int64),
        "device": np.array([f"d{k}" for k in range(start, start + n)]),
        "features": np.full((n, 3), start, dtype=np.float32),
    }


def test_batches_come_back_in_order_with_dense_ids_across_restarts(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path, segment_bytes=300)  # small: several segments
    firsts = [
        log.append(_batch(n, 10 * k), {"ruleset": f"v{k}"}) for k, n in enumerate([3, 1, 5, 2])
    ]
    assert firsts == [1, 4, 5, 10]
    log.close()
    assert len(list(tmp_path.glob("decisions-*.log"))) > 1
    again = DecisionLog(tmp_path, segment_bytes=300)
    assert again.next_id == 12
    assert again.append(_batch(1, 99), {"ruleset": "v9"}) == 12
    records = list(again.records())
    assert [r.meta["ruleset"] for r in records] == ["v0", "v1", "v2", "v3", "v9"]
    assert [r.rows for r in records] == [3, 1, 5, 2, 1]
    assert records[2].columns["device"].tolist() == ["d20", "d21", "d22", "d23", "d24"]
    assert records[2].columns["features"].shape == (5, 3)
    assert [r.meta["first_id"] for r in again.records(since_id=9)] == [5, 10, 12]
    again.close()


def test_a_torn_tail_is_cut_off_and_appending_goes_on(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path)
    log.append(_batch(2, 0), {})
    log.append(_batch(2, 2), {})
    log.close()
    segment = next(tmp_path.glob("decisions-*.log"))
    size = segment.stat().st_size
    with segment.open("r+b") as f:
        f.truncate(size - 7)  # the second record, half written
    log = DecisionLog(tmp_path)
    assert log.next_id == 3
    assert log.append(_batch(1, 5), {}) == 3
    assert [r.rows for r in log.records()] == [2, 1]
    log.close()


def test_a_reader_leaves_the_record_being_written_alone(tmp_path: Path) -> None:
    """A running engine's log read by another process (a backtest, an audit lookup): its
    record still being written is skipped, and the file is not cut short under the writer."""
    from puhui.risk._log import read_records

    writer = DecisionLog(tmp_path)
    writer.append(_batch(2, 0), {"n": 1})
    writer.append(_batch(3, 2), {"n": 2})
    writer.flush()
    segment = next(tmp_path.glob("decisions-*.log"))
    whole = segment.read_bytes()
    with segment.open("r+b") as f:  # as if the second append were half way through
        f.truncate(len(whole) - 9)
    assert [r.meta["n"] for r in read_records(tmp_path)] == [1]
    assert segment.stat().st_size == len(whole) - 9  # untouched
    with segment.open("r+b") as f:  # the writer finishes its record
        f.seek(0, os.SEEK_END)
        f.write(whole[-9:])
    assert [r.meta["n"] for r in read_records(tmp_path, since_id=3)] == [2]
    writer.close()


def test_corruption_before_the_end_is_an_error(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path)
    log.append(_batch(4, 0), {})
    log.append(_batch(4, 4), {})
    log.close()
    segment = next(tmp_path.glob("decisions-*.log"))
    data = bytearray(segment.read_bytes())
    data[40] ^= 0xFF  # inside the first record's body
    segment.write_bytes(bytes(data))
    with pytest.raises(DecisionLogCorruptError, match="checksum"):
        DecisionLog(tmp_path)
    assert DecisionLogCorruptError.code == "risk_log_corrupt"


def test_columns_of_different_lengths_are_refused(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path)
    with pytest.raises(ValueError, match="one value per row"):
        log.append({"a": np.zeros(2), "b": np.zeros(3)}, {})
    assert log.next_id == 1
    log.close()


def test_blobs_are_kept_beside_the_columns(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path)
    blob = np.frombuffer(b"abcdefg", dtype=np.uint8)
    log.append(_batch(4, 0), {"ruleset": "v1"}, blobs={"text": blob})
    with pytest.raises(ValueError, match="blob"):
        log.append(_batch(4, 4), {}, blobs={"text": np.zeros(3, dtype=np.int64)})
    with pytest.raises(ValueError, match="blob"):
        log.append(_batch(4, 4), {}, blobs={"at_ns": blob})
    assert log.next_id == 5
    log.close()
    reopened = DecisionLog(tmp_path)
    (record,) = reopened.records()
    reopened.close()
    assert record.meta["blobs"] == ["text"] and record.rows == 4
    assert record.columns["text"].tobytes() == b"abcdefg"
    assert "text" not in record.row_columns()
    assert set(record.row_columns()) == set(_batch(4, 0))


def test_reasons_are_read_back_from_every_layout_the_log_has_used() -> None:
    reasons = [("rule.a(x=1)", "model:y=+0.500"), (), ("shadow:\u9a8c",)]
    texts = [json.dumps(list(found)) for found in reasons]
    blob = "".join(texts).encode("ascii")
    ragged: dict[str, np.ndarray] = {
        "reasons_end": np.cumsum([len(t) for t in texts], dtype=np.int64),
        "reasons_text": np.frombuffer(blob, dtype=np.uint8),
    }
    layouts: list[dict[str, np.ndarray]] = [
        ragged,
        {"reasons": np.array([t.encode("ascii") for t in texts])},  # 2026-11-26: bytes
        {"reasons": np.array(texts)},  # before: unicode
    ]
    for columns in layouts:
        record = LogRecord({"rows": 3}, columns, 1, 0)
        assert logged_reasons(record) == reasons


def test_a_record_keeps_its_byte_layout(tmp_path: Path) -> None:
    """Records are written in parts (the arrays' own memory): the bytes on disk are still
    MAGIC, length, CRC-32, header length, JSON header, then each array's bytes in C order."""
    columns = {
        **_batch(4, 7),
        "empty": np.zeros((4, 0), dtype=np.float32),
        "matrix": np.asfortranarray(np.arange(8, dtype=np.int16).reshape(4, 2)),
    }
    meta = {"ruleset": "v1", "rows": 4, "first_id": 1}
    arrays = []
    for name, column in columns.items():
        data = np.ascontiguousarray(column).tobytes()
        arrays.append([name, column.dtype.str, list(column.shape), len(data)])
    header = json.dumps({"meta": meta, "arrays": arrays}).encode()
    body = struct.pack("<I", len(header)) + header
    body += b"".join(np.ascontiguousarray(c).tobytes() for c in columns.values())
    expected = struct.pack("<4sII", b"PRDL", len(body), zlib.crc32(body)) + body
    assert _encode(columns, meta) == expected
    log = DecisionLog(tmp_path)
    log.append(columns, {"ruleset": "v1"})
    log.close()
    assert (tmp_path / "decisions-00000001.log").read_bytes() == expected
    again = DecisionLog(tmp_path)
    [record] = list(again.records())
    again.close()
    assert np.array_equal(record.columns["matrix"], columns["matrix"])


def test_appends_are_synced_by_the_log_thread_and_close_syncs_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_by: list[int] = []
    synced = threading.Event()
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        real(fd)
        synced_by.append(threading.get_ident())
        synced.set()

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    log = DecisionLog(tmp_path, sync_interval_s=0.01)
    log.append(_batch(2, 0), {"ruleset": "v1"})
    assert synced.wait(timeout=30)  # liveness only: the syncer does come
    assert synced_by and threading.get_ident() not in synced_by  # not on the caller's path
    synced_by.clear()
    log.close()  # nothing new since the last sync: nothing to do, and the thread is gone
    assert synced_by == []
    assert not any(t.name == "decision-log-sync" and t.is_alive() for t in threading.enumerate())
    again = DecisionLog(tmp_path, sync_interval_s=60.0)  # the syncer would wait a minute
    again.append(_batch(1, 5), {"ruleset": "v2"})
    again.flush()  # ...but flush does not wait for it
    assert synced_by == [threading.get_ident()]
    again.append(_batch(1, 6), {"ruleset": "v3"})
    again.close()  # nor close (it wakes the syncer, or syncs itself)
    assert len(synced_by) == 2
