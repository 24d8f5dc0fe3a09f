"""Errors of the payments service; each code is listed in ``docs/errors.md``."""

from __future__ import annotations

from puhui.errors import InvalidInputError, PuhuiError


class PaymentsError(PuhuiError):
    """A payments operation that cannot be done as asked (nothing moved)."""

    code = "payments_error"


class InvalidPayloadError(InvalidInputError):
    """A field of a payments request is malformed (text too long, QR payload unreadable)."""

    code = "invalid_payload"


class AmountOutOfRangeError(InvalidInputError):
    """An amount that is not a positive int of minor units within the service's range."""

    code = "amount_out_of_range"


class InvalidPhoneError(InvalidInputError):
    code = "invalid_phone"


class CustomerNotFoundError(PaymentsError):
    code = "customer_not_found"


class MerchantNotFoundError(PaymentsError):
    code = "merchant_not_found"


class CardNotFoundError(PaymentsError):
    """The bank card is not bound to this customer."""

    code = "card_not_found"


class OperationNotFoundError(PaymentsError):
    code = "operation_not_found"


class PhoneTakenError(PaymentsError):
    code = "phone_taken"


class IdentityTakenError(PaymentsError):
    """That national id is already verified for another customer."""

    code = "identity_taken"


class AccountFrozenError(PaymentsError):
    """The customer or merchant is frozen; no money may leave or reach the account."""

    code = "account_frozen"


class SamePartyError(PaymentsError):
    """Payer and payee are the same account."""

    code = "same_party"


class KycLimitExceededError(PaymentsError):
    """The customer's KYC level does not allow this amount (single payment, daily outflow or
    wallet balance); ``limit`` says which."""

    code = "kyc_limit_exceeded"


class InsufficientFundsError(PaymentsError):
    code = "insufficient_funds"


class IdempotencyKeyReusedError(PaymentsError):
    """The same idempotency key came with a different request."""

    code = "idempotency_key_reused"


class PaymentCodeInvalidError(PaymentsError):
    """A customer payment code that is unknown, used or expired."""

    code = "payment_code_invalid"


class OperationStateError(PaymentsError):
    """The operation is not in a state that allows this (e.g. verify a completed payment)."""

    code = "operation_state_invalid"


class KycLevelError(PaymentsError):
    """A KYC level may only go up one step at a time, with the evidence that step needs."""

    code = "kyc_level_invalid"


class OrderNotFoundError(PaymentsError):
    code = "order_not_found"


class NotOrderPartyError(PaymentsError):
    """The caller is not the order's buyer (or seller) and may not do this."""

    code = "not_order_party"


class OrderClosedError(PaymentsError):
    """The order is closed (cancelled, unpaid in time or refunded in full)."""

    code = "order_closed"


class OrderFinishedError(PaymentsError):
    """The order is finished: receipt was confirmed and the seller paid (confirm twice,
    refund after finish)."""

    code = "order_finished"


class OrderNotPaidError(PaymentsError):
    """The order has not been paid (ship or refund an unpaid order)."""

    code = "order_not_paid"


class OrderAlreadyPaidError(PaymentsError):
    code = "order_already_paid"


class OrderNotShippedError(PaymentsError):
    """The order has not been shipped (confirm receipt, extend the timer)."""

    code = "order_not_shipped"


class OrderAlreadyShippedError(PaymentsError):
    code = "order_already_shipped"


class RefundOpenError(PaymentsError):
    """A refund of this order is still open (one at a time; no confirmation meanwhile)."""

    code = "refund_open"


class RefundExceedsEscrowError(PaymentsError):
    """More than what is left in escrow for this order."""

    code = "refund_exceeds_escrow"


class RefundNotFoundError(PaymentsError):
    code = "refund_not_found"


class RefundStateError(PaymentsError):
    """The refund is not in a state that allows this (answer twice, escalate late)."""

    code = "refund_state_invalid"


class ExtensionLimitError(PaymentsError):
    """The confirmation timer may not be extended that far."""

    code = "extension_limit_exceeded"


class StoreLedgerMismatchError(PaymentsError):
    """The SQL store's records belong to another ledger: open the pair that belongs
    together (or start both afresh)."""

    code = "store_ledger_mismatch"
