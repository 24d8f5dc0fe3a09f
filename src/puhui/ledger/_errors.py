"""Errors of the ledger package (each with a stable code, see docs/errors.md)."""

from __future__ import annotations

from puhui.errors import InvalidInputError, PuhuiError


class BatchTooLargeError(InvalidInputError):
    """More events in one request than a batch may hold (8,189)."""

    code = "batch_too_large"


class TooMuchDataError(InvalidInputError):
    """A query limit larger than one reply may hold (8,189 results)."""

    code = "too_much_data"


class WrongTypeError(InvalidInputError):
    """An event or field of the wrong type (e.g. a float or string amount)."""

    code = "wrong_type"


class FieldOutOfRangeError(InvalidInputError):
    """A negative value, or one too large for its field (ids and amounts are u128)."""

    code = "field_out_of_range"


class UnknownFieldError(InvalidInputError):
    """A field that the event type does not have, or a columnar array of another layout."""

    code = "unknown_field"


class LedgerClosedError(PuhuiError):
    """The client was closed."""

    code = "ledger_closed"


class LedgerFailedError(PuhuiError):
    """The ledger stopped after an unexpected fault; reopen it to recover from the journal."""

    code = "ledger_failed"


class LedgerLockedError(PuhuiError):
    """Another process has this ledger open (one writer per ledger)."""

    code = "ledger_locked"


class JournalCorruptError(PuhuiError):
    """A journal record fails its checksum, has a gap, or cannot be decoded; or records known
    to be durable are gone (a segment missing or cut short, the journal ending early)."""

    code = "journal_corrupt"


class JournalUnavailableError(PuhuiError):
    """The journal cannot be reached or written."""

    code = "journal_unavailable"


class SnapshotCorruptError(PuhuiError):
    """A snapshot fails its checksum or disagrees with the journal."""

    code = "snapshot_corrupt"


class VerificationError(PuhuiError):
    """``verify`` found an invariant broken."""

    code = "ledger_verification_failed"


class LedgerUnavailableError(PuhuiError):
    """A ledger server cannot be reached, or went away: the connection is lost. A create
    whose answer did not arrive may or may not have been made; repeating it with the same
    ids is safe (it answers ``exists``)."""

    code = "ledger_unavailable"


class LedgerSocketInUseError(PuhuiError):
    """``serve`` was given a path where a ledger server already listens, or that is not a
    socket (the file is left alone)."""

    code = "ledger_socket_in_use"
