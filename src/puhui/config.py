"""Settings read from the environment, once, at the composition root (CLI or app factory).

Nothing here touches the file system or connects anywhere: ``Settings.from_env`` only reads
variables and fills in defaults. The caller creates directories and opens connections.

| variable              | default                                   |
|-----------------------|-------------------------------------------|
| ``PUHUI_DATA_DIR``    | ``./puhui-data``                          |
| ``PUHUI_DATABASE_URL``| ``sqlite:///<data dir>/puhui.sqlite``     |
| ``PUHUI_LEDGER_URL``  | ``<data dir>/ledger`` (file journal)      |

An empty variable counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_DIR_DEFAULT", "Settings"]

DATA_DIR_DEFAULT = Path("puhui-data")
"""Where local state lives unless ``PUHUI_DATA_DIR`` says otherwise (relative to the cwd)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Where Puhui keeps its data."""

    data_dir: Path
    """Directory for local state: the embedded databases, ledger snapshots, exports."""
    database_url: str
    """SQLAlchemy URL of the SQL store (service tables): SQLite file or PostgreSQL."""
    ledger_url: str
    """The ledger journal: a directory (file journal), ``*.sqlite`` or a PostgreSQL URL."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default: ``os.environ``), with defaults for what is unset."""
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("PUHUI_DATA_DIR") or DATA_DIR_DEFAULT)
        database_url = env.get("PUHUI_DATABASE_URL") or f"sqlite:///{data_dir / 'puhui.sqlite'}"
        ledger_url = env.get("PUHUI_LEDGER_URL") or str(data_dir / "ledger")
        return cls(data_dir=data_dir, database_url=database_url, ledger_url=ledger_url)
