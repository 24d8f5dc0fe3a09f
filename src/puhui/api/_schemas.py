"""JSON shapes of the API. 128-bit and 64-bit integers (ids, amounts, user data, timestamps)
travel as decimal strings, which every JSON parser keeps exact; small fields are numbers."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, with_config
from typing_extensions import TypedDict

from puhui import limits
from puhui.ledger import Account, AccountBalance, Transfer

from ._json_events import DecodedEvents

U128Text = Annotated[
    str,
    Field(
        pattern=r"^(0|[1-9][0-9]{0,38})$",
        max_length=39,
        description="An unsigned 128-bit integer as decimal text (at most 2**128 - 1).",
        examples=["340282366920938463463374607431768211455"],
    ),
]
U64Text = Annotated[
    str,
    Field(
        pattern=r"^(0|[1-9][0-9]{0,19})$",
        max_length=20,
        description="An unsigned 64-bit integer as decimal text (at most 2**64 - 1).",
        examples=["1"],
    ),
]
U32 = Annotated[int, Field(ge=0, le=(1 << 32) - 1)]
U16 = Annotated[int, Field(ge=0, le=(1 << 16) - 1)]

BATCH = limits.batch_events_max


class _In(BaseModel):
    # Strict: a number is not accepted for a decimal-text field, nor text for a number.
    model_config = ConfigDict(extra="forbid", strict=True)


# A batch's events are validated as plain mappings, not model objects: pydantic builds 8,189
# dicts in about a third of the time it takes to build 8,189 models, and the route reads
# them a column at a time anyway (docs/benchmarks.md). A field left out is 0.
_ZERO_TEXT = Field(json_schema_extra={"default": "0"})
_ZERO = Field(json_schema_extra={"default": 0})


@with_config(ConfigDict(extra="forbid", strict=True))
class AccountIn(TypedDict):
    id: U128Text
    user_data_128: NotRequired[Annotated[U128Text, _ZERO_TEXT]]
    user_data_64: NotRequired[Annotated[U64Text, _ZERO_TEXT]]
    user_data_32: NotRequired[
        Annotated[
            U32,
            Field(
                description="Reserved: the platform sets it to your tenant number "
                "(send 0 or omit).",
                json_schema_extra={"default": 0},
            ),
        ]
    ]
    ledger: U32
    code: U16
    flags: NotRequired[
        Annotated[
            U16,
            Field(
                description="AccountFlags bits (TigerBeetle's values).",
                json_schema_extra={"default": 0},
            ),
        ]
    ]


@with_config(ConfigDict(extra="forbid", strict=True))
class TransferIn(TypedDict):
    id: U128Text
    debit_account_id: U128Text
    credit_account_id: U128Text
    amount: U128Text
    pending_id: NotRequired[Annotated[U128Text, _ZERO_TEXT]]
    user_data_128: NotRequired[Annotated[U128Text, _ZERO_TEXT]]
    user_data_64: NotRequired[Annotated[U64Text, _ZERO_TEXT]]
    user_data_32: NotRequired[Annotated[U32, _ZERO]]
    timeout: NotRequired[Annotated[U32, _ZERO]]
    ledger: U32
    code: U16
    flags: NotRequired[
        Annotated[
            U16,
            Field(
                description="TransferFlags bits (TigerBeetle's values).",
                json_schema_extra={"default": 0},
            ),
        ]
    ]


class _EventsIn(_In):
    _decoded: DecodedEvents | None = PrivateAttr(default=None)

    @classmethod
    def of_decoded(cls, decoded: DecodedEvents) -> Self:
        """The body as ``_json_events`` read it: its events already the ledger's array
        (``decoded``), the model's list left empty."""
        empty: dict[str, Any] = {name: [] for name in cls.model_fields}
        body = cls.model_construct(**empty)
        body._decoded = decoded
        return body

    @property
    def decoded(self) -> DecodedEvents | None:
        """The events as the ledger's array when ``_json_events`` read the body (then the
        model's list is empty), else None."""
        return self._decoded


class CreateAccountsIn(_EventsIn):
    accounts: list[AccountIn] = Field(max_length=BATCH)


class CreateTransfersIn(_EventsIn):
    transfers: list[TransferIn] = Field(max_length=BATCH)


class LookupIn(_In):
    ids: list[U128Text] = Field(max_length=BATCH)


class CreateResultOut(BaseModel):
    index: int
    """Position of the event in the request."""
    id: str
    status: str
    """``created``, ``exists``, ``exceeds_credits``, ... (TigerBeetle's status, lower case)."""
    timestamp: str


class CreateResultsOut(BaseModel):
    results: list[CreateResultOut]


class AccountOut(BaseModel):
    id: str
    debits_pending: str
    debits_posted: str
    credits_pending: str
    credits_posted: str
    user_data_128: str
    user_data_64: str
    user_data_32: int
    ledger: int
    code: int
    flags: int
    timestamp: str


class TransferOut(BaseModel):
    id: str
    debit_account_id: str
    credit_account_id: str
    amount: str
    pending_id: str
    user_data_128: str
    user_data_64: str
    user_data_32: int
    timeout: int
    ledger: int
    code: int
    flags: int
    timestamp: str


class BalanceOut(BaseModel):
    debits_pending: str
    debits_posted: str
    credits_pending: str
    credits_posted: str
    timestamp: str


class AccountsOut(BaseModel):
    accounts: list[AccountOut]


class TransfersOut(BaseModel):
    transfers: list[TransferOut]


class AccountPage(BaseModel):
    data: list[AccountOut]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page; null on the last page."
    )


class TransferPage(BaseModel):
    data: list[TransferOut]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page; null on the last page (a page of "
        "query_transfers may be short, even empty, before that)."
    )


class BalancePage(BaseModel):
    data: list[BalanceOut]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page; null on the last page."
    )


class Problem(BaseModel):
    """An error (RFC 9457 problem details) with Puhui's stable error ``code``."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    code: str
    detail: str


def account_out(a: Account) -> AccountOut:
    return AccountOut(
        id=str(a.id),
        debits_pending=str(a.debits_pending),
        debits_posted=str(a.debits_posted),
        credits_pending=str(a.credits_pending),
        credits_posted=str(a.credits_posted),
        user_data_128=str(a.user_data_128),
        user_data_64=str(a.user_data_64),
        user_data_32=a.user_data_32,
        ledger=a.ledger,
        code=a.code,
        flags=int(a.flags),
        timestamp=str(a.timestamp),
    )


def transfer_out(t: Transfer) -> TransferOut:
    return TransferOut(
        id=str(t.id),
        debit_account_id=str(t.debit_account_id),
        credit_account_id=str(t.credit_account_id),
        amount=str(t.amount),
        pending_id=str(t.pending_id),
        user_data_128=str(t.user_data_128),
        user_data_64=str(t.user_data_64),
        user_data_32=t.user_data_32,
        timeout=t.timeout,
        ledger=t.ledger,
        code=t.code,
        flags=int(t.flags),
        timestamp=str(t.timestamp),
    )


def balance_out(b: AccountBalance) -> BalanceOut:
    return BalanceOut(
        debits_pending=str(b.debits_pending),
        debits_posted=str(b.debits_posted),
        credits_pending=str(b.credits_pending),
        credits_posted=str(b.credits_posted),
        timestamp=str(b.timestamp),
    )
