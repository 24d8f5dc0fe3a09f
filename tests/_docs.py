"""The code blocks of the project's docs, for the tests that run them as a reader would."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(doc: str) -> list[str]:
    """The ```` ```python ```` blocks of ``docs/<doc>``, in order."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)
