"""Where things are in a ruleset file: tomllib gives values, not positions, so we find them.

``locate_rules`` finds each ``[[rule]]`` header and, inside its table, the ``when = ...``
string; ``StringMap`` maps an offset in the decoded string back to the file's line and column
(basic and literal strings, single-line and multi-line, escapes and line-ending backslashes).
A located string is only trusted when it decodes to exactly what tomllib read.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*rule[ \t]*\]\][ \t]*(?:#.*)?$", re.MULTILINE)
_ANY_TABLE = re.compile(r"^[ \t]*\[", re.MULTILINE)
_WHEN = re.compile(r"^[ \t]*when[ \t]*=[ \t]*", re.MULTILINE)
_SHORT_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class Lines:
    """Line and column of offsets in one text (a sorted index of its newlines)."""

    def __init__(self, text: str) -> None:
        self._starts = [0] + [match.end() for match in re.finditer("\n", text)]

    def line_column(self, offset: int) -> tuple[int, int]:
        """1-based line and column (in characters) of ``offset``."""
        line = bisect.bisect_right(self._starts, offset)
        return line, offset - self._starts[line - 1] + 1


@dataclass(frozen=True, slots=True)
class StringMap:
    """A decoded TOML string and, for each of its characters, its offset in the file."""

    value: str
    offsets: tuple[int, ...]
    """``offsets[i]`` is where ``value[i]`` starts; one extra entry for the end of the string."""

    def file_offset(self, index: int) -> int:
        return self.offsets[min(max(index, 0), len(self.offsets) - 1)]


@dataclass(frozen=True, slots=True)
class RuleLocation:
    header_offset: int | None
    when_offset: int | None
    """Where the ``when`` value's string literal starts (its opening quote)."""


def locate_rules(text: str) -> list[RuleLocation]:
    """Each ``[[rule]]`` table of ``text`` in order, with where its ``when`` string starts."""
    headers = [match.start() for match in _HEADER.finditer(text)]
    found: list[RuleLocation] = []
    for position, header in enumerate(headers):
        body_start = text.find("\n", header) + 1 or len(text)
        limit = headers[position + 1] if position + 1 < len(headers) else len(text)
        next_table = _ANY_TABLE.search(text, body_start, limit)
        body_end = next_table.start() if next_table else limit
        when = _WHEN.search(text, body_start, body_end)
        found.append(RuleLocation(header, when.end() if when else None))
    return found


def read_string(text: str, start: int) -> StringMap:
    """Decode the TOML string literal starting at ``start`` (``ValueError`` if it is not one)."""
    for quote in ('"""', "'''", '"', "'"):
        if text.startswith(quote, start):
            break
    else:
        raise ValueError("not a string")
    multi = len(quote) == 3
    literal = quote[0] == "'"
    pos = start + len(quote)
    if multi and text.startswith("\r\n", pos):
        pos += 2
    elif multi and text.startswith("\n", pos):
        pos += 1
    chars: list[str] = []
    offsets: list[int] = []
    while True:
        if pos >= len(text):
            raise ValueError("unterminated string")
        if text.startswith(quote, pos):
            # A multi-line string may end with up to two quotes of its own before the closer.
            if multi:
                extra = 0
                while extra < 2 and text.startswith(quote, pos + 1):
                    extra += 1
                    pos += 1
                for k in range(extra):
                    chars.append(quote[0])
                    offsets.append(pos - extra + k)
            offsets.append(pos)
            return StringMap("".join(chars), tuple(offsets))
        char = text[pos]
        if char == "\n" and not multi:
            raise ValueError("newline in a single-line string")
        if char == "\\" and not literal:
            escaped = text[pos + 1 : pos + 2]
            if escaped in _SHORT_ESCAPES:
                chars.append(_SHORT_ESCAPES[escaped])
                offsets.append(pos)
                pos += 2
            elif escaped in ("u", "U"):
                width = 4 if escaped == "u" else 8
                chars.append(chr(int(text[pos + 2 : pos + 2 + width], 16)))
                offsets.append(pos)
                pos += 2 + width
            elif multi and escaped in (" ", "\t", "\r", "\n"):
                # A line-ending backslash: skip it and all whitespace (and newlines) after it.
                pos += 1
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
            else:
                raise ValueError("bad escape")
            continue
        if char == "\r" and text.startswith("\r\n", pos) and multi:
            chars.append("\n")
            offsets.append(pos)
            pos += 2
            continue
        chars.append(char)
        offsets.append(pos)
        pos += 1
