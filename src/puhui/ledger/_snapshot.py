"""Snapshots of the ledger state, written atomically beside the transfer store.

A snapshot is a directory ``snapshots/<op>/`` holding the mutable state (``StateImage`` arrays
as ``.npy`` files) and ``manifest.json`` with the journal identity, the last journalled
operation it includes, that record's checksum (so that a journal which lost the record — restored
from a backup, or a copy of the ledger that went its own way — is not taken for the one the
state was built from), the digests of every transfer and balance row below its count, a piece
of 1 MiB at a time (``Engine.sync_rows``; ``transfer_rows.npy``, ``balance_rows.npy``: a lost,
foreign or damaged row file is noticed, whichever row is hit), and a CRC-32 of every file.
It is written into a temporary directory, fsynced, then renamed into place, so a crash never
leaves a half-written snapshot visible.
Transfer and balance rows below the snapshot's count are fsynced before the manifest is
written: they never change after being written.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ._engine import StateImage
from ._errors import SnapshotCorruptError
from ._os import fsync_path

SNAPSHOTS_KEPT = 2
FORMAT = 3
"""3: the digests of every row below the count (2 had a checksum of the newest rows only; such
a snapshot is skipped, and the state rebuilt from the journal)."""
ROW_DIGESTS = ("transfer_rows", "balance_rows")
"""The files (``.npy``) of the row digests beside the state's arrays."""


@dataclass(frozen=True, slots=True, eq=False)
class Manifest:
    identity: str
    """The journal's."""
    op: int
    """The last journal record the state includes."""
    record_checksum: int
    """The checksum of that record's payload (0 for op 0)."""
    transfer_rows: np.ndarray[Any, Any]
    """The digests of the transfer rows below the state's count (``Engine.sync_rows``)."""
    balance_rows: np.ndarray[Any, Any]
    """The digests of their balance rows."""


def _crc_file(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_snapshot(root: Path, manifest: Manifest, image: StateImage) -> Path:
    """Write ``image``, the state described by ``manifest``."""
    op = manifest.op
    snapshots = root / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    final = snapshots / f"{op:020d}"
    if final.exists():
        return final
    tmp = snapshots / f"tmp-{op:020d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    checksums: dict[str, int] = {}
    arrays: dict[str, np.ndarray[Any, Any]] = {
        f.name: getattr(image, f.name) for f in fields(image)
    }
    arrays.update(transfer_rows=manifest.transfer_rows, balance_rows=manifest.balance_rows)
    for name, array in arrays.items():
        path = tmp / f"{name}.npy"
        with path.open("wb") as out:
            np.save(out, array, allow_pickle=False)
            out.flush()
            os.fsync(out.fileno())
        checksums[name] = _crc_file(path)
    content = {
        "format": FORMAT,
        "identity": manifest.identity,
        "op": op,
        "record_checksum": manifest.record_checksum,
        "checksums": checksums,
    }
    with (tmp / "manifest.json").open("w") as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(snapshots)
    for old in sorted(p for p in snapshots.iterdir() if p.name.isdigit())[:-SNAPSHOTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_snapshot(path: Path) -> tuple[Manifest, StateImage]:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            raise SnapshotCorruptError(f"snapshot {path.name} has unknown format")
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name in [*(f.name for f in fields(StateImage)), *ROW_DIGESTS]:
            file = path / f"{name}.npy"
            if _crc_file(file) != manifest["checksums"][name]:
                raise SnapshotCorruptError(f"snapshot {path.name}: {name} fails its checksum")
            arrays[name] = np.load(file, allow_pickle=False)
        described = Manifest(
            identity=str(manifest["identity"]),
            op=int(manifest["op"]),
            record_checksum=int(manifest["record_checksum"]),
            transfer_rows=arrays.pop("transfer_rows"),
            balance_rows=arrays.pop("balance_rows"),
        )
        return described, StateImage(**arrays)
    except (OSError, ValueError, KeyError) as error:
        raise SnapshotCorruptError(f"snapshot {path.name} cannot be read: {error}") from error


def list_snapshots(root: Path) -> list[Path]:
    """Complete snapshots, newest first."""
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return []
    return sorted((p for p in snapshots.iterdir() if p.name.isdigit()), reverse=True)


def remove_unfinished(root: Path) -> None:
    """Remove what snapshots cut short by a crash left (``tmp-<op>`` directories). Call
    only while no snapshot is being written (on opening)."""
    snapshots = root / "snapshots"
    if snapshots.is_dir():
        for path in snapshots.glob("tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def remove_snapshot(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_all(root: Path) -> None:
    shutil.rmtree(root / "snapshots", ignore_errors=True)
