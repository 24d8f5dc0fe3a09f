"""``PaymentOwners``: which tenant owns each payments customer and merchant.

Payments' own tables carry no tenant: a customer is a person, a merchant a shop, whoever
brought them. The platform keeps the ownership beside them (``platform_payment_owners``, one
row per object, never changed once written), and the API resolves every customer and
merchant a request touches through it: an object owned by another tenant is answered exactly
as one that does not exist.

Ownership never changes and objects are never deleted, so an answer once read is true
forever: owners are remembered in memory (bounded), and a busy customer costs no SQL read.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from collections.abc import Iterable

import sqlalchemy as sa

from puhui.clock import Clock, SystemClock
from puhui.store import platform as t

owners_cached_max = 1_000_000
"""Most ownership facts remembered at once (unit: objects, ~144 B each); beyond it the
oldest are forgotten first (emptying it all at once sent every hot lookup to SQL together)."""


class OwnedKind(enum.StrEnum):
    CUSTOMER = "customer"
    MERCHANT = "merchant"


class PaymentOwners:
    """Ownership of payments objects by tenants (see the module's description)."""

    def __init__(self, engine: sa.Engine, *, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self._known: OrderedDict[tuple[OwnedKind, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, tenant_id: int, kind: OwnedKind, object_id: int) -> None:
        """Record that ``tenant_id`` owns the object (created for it a moment ago), in a
        transaction of its own. Prefer ``claim_in`` the object's own transaction: an object
        created without its owner row belongs to nobody."""
        with self.engine.begin() as conn:
            self.claim_in(conn, tenant_id, kind, object_id)
        self.remember(tenant_id, kind, object_id)

    def claim_in(
        self, conn: sa.Connection, tenant_id: int, kind: OwnedKind, object_id: int
    ) -> None:
        """Record the owner through ``conn``: in the transaction that creates the object, so
        both commit or neither does. Call ``remember`` once it committed (not before: a
        rolled-back id may be handed out again)."""
        conn.execute(
            t.payment_owners.insert().values(
                kind=str(kind),
                object_id=object_id,
                tenant_id=tenant_id,
                created_at_ns=self.clock.now_ns(),
            )
        )

    def remember(self, tenant_id: int, kind: OwnedKind, object_id: int) -> None:
        """Keep a committed ownership in memory."""
        self._remember({(kind, object_id): tenant_id})

    def owner(self, kind: OwnedKind, object_id: int) -> int | None:
        """The tenant owning the object, or None (no such object, or nobody owns it)."""
        with self._lock:
            known = self._known.get((kind, object_id))
        if known is not None:
            return known
        return self.owners(kind, [object_id]).get(object_id)

    def known(self, kind: OwnedKind, object_id: int) -> int | None:
        """The owner if it is remembered in memory (no SQL; None: not known here)."""
        with self._lock:
            return self._known.get((kind, object_id))

    def owners(self, kind: OwnedKind, object_ids: Iterable[int]) -> dict[int, int]:
        """Object id → owning tenant, for the ids that have an owner."""
        wanted = set(object_ids)
        found: dict[int, int] = {}
        with self._lock:
            for object_id in list(wanted):
                known = self._known.get((kind, object_id))
                if known is not None:
                    found[object_id] = known
                    wanted.discard(object_id)
        if not wanted:
            return found
        table = t.payment_owners
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.object_id, table.c.tenant_id).where(
                    table.c.kind == str(kind), table.c.object_id.in_(sorted(wanted))
                )
            ).all()
        read = {int(r.object_id): int(r.tenant_id) for r in rows}
        self._remember({(kind, k): v for k, v in read.items()})
        found.update(read)
        return found

    def tenant_of(self, conn: sa.Connection, party: str, party_id: int) -> int | None:
        """The owner of a payments party, read through ``conn`` (the caller's transaction:
        webhooks ask this while a state change is being recorded). Billers and other kinds
        of party belong to no tenant."""
        try:
            kind = OwnedKind(str(party))
        except ValueError:
            return None
        known = self.known(kind, party_id)
        if known is not None:
            return known
        table = t.payment_owners
        row = conn.execute(
            sa.select(table.c.tenant_id).where(
                table.c.kind == str(kind), table.c.object_id == party_id
            )
        ).first()
        if row is None:
            return None
        self._remember({(kind, party_id): int(row.tenant_id)})
        return int(row.tenant_id)

    def owns(self, tenant_id: int, kind: OwnedKind, object_id: int) -> bool:
        return self.owner(kind, object_id) == tenant_id

    def _remember(self, facts: dict[tuple[OwnedKind, int], int]) -> None:
        with self._lock:
            known = self._known
            known.update(facts)
            while len(known) > owners_cached_max:
                known.popitem(last=False)
