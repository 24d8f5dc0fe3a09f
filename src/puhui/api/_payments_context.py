"""The payments services the API calls, built once by ``create_app``."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

from puhui.payments import (
    Bills,
    Checkout,
    Operation,
    PaymentBatches,
    PaymentCoalescer,
    PaymentRequest,
    Payments,
)
from puhui.platform import PaymentOwners

coalesced_batch_max = 1_000
"""Most single payments carried out together in one batch (unit: payments)."""


@dataclass
class PaymentsContext:
    payments: Payments
    checkout: Checkout
    bills: Bills
    owners: PaymentOwners
    batches: PaymentBatches
    _coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PaymentCoalescer] = field(
        default_factory=weakref.WeakKeyDictionary
    )

    _waiting: int = 0

    def depth(self) -> int:
        """Single payments waiting for their coalesced batch (queued or being carried out)."""
        return self._waiting

    async def pay(self, payment: PaymentRequest) -> Operation:
        """Carry out one payment in this event loop's coalesced batch."""
        self._waiting += 1
        try:
            return await self.coalescer().pay(payment)
        finally:
            self._waiting -= 1

    def coalescer(self) -> PaymentCoalescer:
        """This event loop's coalescer (its futures belong to the loop)."""
        loop = asyncio.get_running_loop()
        found = self._coalescers.get(loop)
        if found is None:
            found = self._coalescers[loop] = PaymentCoalescer(
                self.batches, batch_max=coalesced_batch_max
            )
        return found
