"""SQL storage for the services: the engine factory, every domain's tables, migrations.

Each service owns its tables (``puhui.store.payments`` for payments, ``puhui.store.platform``
for tenants, API keys, idempotency records and the audit log, ``puhui.store.risk`` for
risk cases) and no other package reads them.
``migrate(engine)`` brings a database to the current schema (Alembic).
"""

from . import payments, platform, risk
from ._engine import create_engine
from ._metadata import metadata
from ._migrate import current_revision, migrate
from ._planner import unindexed

__all__ = [
    "create_engine",
    "current_revision",
    "metadata",
    "migrate",
    "payments",
    "platform",
    "risk",
    "unindexed",
]
