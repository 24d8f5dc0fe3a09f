"""The one place that compiles ledger kernels (numba, cached on disk next to the source)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from numba import njit


def jit(*, inline: Literal["never", "always"] = "never") -> Callable[[Callable[..., Any]], Any]:
    """Compile a function with numba in nopython mode; the result is typed ``Any``.

    Compiled functions release the GIL, so the writer can apply a batch while another thread
    writes the journal.
    """
    decorator: Callable[[Callable[..., Any]], Any] = njit(cache=True, nogil=True, inline=inline)
    return decorator
