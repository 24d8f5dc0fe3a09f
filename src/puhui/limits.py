"""Limits shared across Puhui, each named once with its unit last.

A limit that belongs to one package lives in that package's options (e.g.
``puhui.ledger.LedgerOptions``); a limit that more than one package (or the API and the CLI)
must agree on lives here. Every input that can grow has a limit: batch sizes, page sizes,
lengths of text that is parsed.
"""

from __future__ import annotations

from typing import Final

batch_events_max: Final = 8189
"""Most events in one ``create_accounts``/``create_transfers`` request (unit: events).

TigerBeetle's limit for a 1 MiB message of 128-byte events; ``puhui.ledger`` enforces the same
number (``puhui.ledger.BATCH_EVENTS_MAX``) and a test keeps the two equal.
"""

query_results_max: Final = 8189
"""Most results one ledger query or lookup returns (unit: results), as TigerBeetle."""

amount_text_chars_max: Final = 64
"""Longest amount text ``puhui.money.parse_amount`` reads (unit: characters).

The largest ledger amount, ``2**128 - 1`` minor units, is 39 digits; 64 leaves room for a sign,
a decimal point and any exponent while keeping hostile input small.
"""

currency_code_chars: Final = 3
"""Length of an ISO 4217 alphabetic currency code (unit: characters)."""
