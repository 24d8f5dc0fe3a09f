"""The root of every error Puhui raises on purpose.

Each subclass has a stable snake_case ``code`` (append-only, listed in ``docs/errors.md``); the
API maps codes to HTTP statuses in one table. Messages carry no secrets and no personal data.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PuhuiError(Exception):
    """Base class: ``code`` names the error for machines, the message explains it to people."""

    code: ClassVar[str] = "puhui_error"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInputError(PuhuiError):
    """Input that can never be valid (wrong type, out of range, unknown field)."""

    code = "invalid_input"


def all_error_classes() -> list[type[PuhuiError]]:
    """Every ``PuhuiError`` subclass defined so far (imported modules only)."""
    found: list[type[PuhuiError]] = []
    pending: list[type[PuhuiError]] = [PuhuiError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
