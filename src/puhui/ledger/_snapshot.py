"""Snapshots of the ledger state, written atomically beside the transfer store.

A snapshot is a directory ``snapshots/<op>/`` holding the mutable state (``StateImage`` arrays
as ``.npy`` files) and ``manifest.json`` with the journal identity, the last journalled
operation it includes, that record's checksum (so that a journal which lost the record — restored
from a backup, or a copy of the ledger that went its own way — is not taken for the one the
state was built from), a checksum of the newest transfer and balance rows below its count as
the row files hold them (``Engine.rows_checksum``: a lost or foreign row file is noticed), and a
CRC-32 of every file. It is written into a temporary directory,
fsynced, then renamed into place, so a crash never leaves a half-written snapshot visible.
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

SNAPSHOTS_KEPT = 2
FORMAT = 2
"""2: the manifest holds the checksums of the journal record at its op and of the rows."""


@dataclass(frozen=True, slots=True)
class Manifest:
    identity: str
    """The journal's."""
    op: int
    """The last journal record the state includes."""
    record_checksum: int
    """The checksum of that record's payload (0 for op 0)."""
    rows_checksum: int
    """``Engine.rows_checksum`` of the state's transfer count."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    for field in fields(StateImage):
        array: np.ndarray[Any, Any] = getattr(image, field.name)
        path = tmp / f"{field.name}.npy"
        with path.open("wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        checksums[field.name] = _crc_file(path)
    content = {
        "format": FORMAT,
        "identity": manifest.identity,
        "op": op,
        "record_checksum": manifest.record_checksum,
        "rows_checksum": manifest.rows_checksum,
        "checksums": checksums,
    }
    with (tmp / "manifest.json").open("w") as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(snapshots)
    for old in sorted(p for p in snapshots.iterdir() if p.name.isdigit())[:-SNAPSHOTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_snapshot(path: Path) -> tuple[Manifest, StateImage]:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            raise SnapshotCorruptError(f"snapshot {path.name} has unknown format")
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for field in fields(StateImage):
            file = path / f"{field.name}.npy"
            if _crc_file(file) != manifest["checksums"][field.name]:
                raise SnapshotCorruptError(f"snapshot {path.name}: {field.name} fails its checksum")
            arrays[field.name] = np.load(file, allow_pickle=False)
        described = Manifest(
            identity=str(manifest["identity"]),
            op=int(manifest["op"]),
            record_checksum=int(manifest["record_checksum"]),
            rows_checksum=int(manifest["rows_checksum"]),
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
