"""The JSON batch routes' bodies read straight into the ledger's arrays, and their answers
written straight from them: compiled code for the one shape a well-formed batch has.

``POST /v1/ledger/transfers`` with 8,189 transfers spent about two thirds of the server's CPU
turning JSON into the ledger's array: ``json.loads`` building a dict per event, pydantic
checking each field (four patterns per transfer), then a Python pass per field reading the
dicts into columns (docs/benchmarks.md). ``decode`` reads the body's bytes once, in a numba
kernel, into the columns, checking each field as the schema does; ``results_json`` writes the
answer from the results array and the ids' text in the body.

The kernel takes only the plain form of a batch — ``{"<events>": [{...}, ...]}`` with JSON
whitespace anywhere between tokens, each key once, spelled without escapes, each decimal-text
field at most 38 digits (``U128Text``) or 19 (``U64Text``), each number plain digits within its
range. Anything else (an unknown or repeated key, an escape, a fraction, a value out of range,
a missing field, a 39-digit id, malformed JSON, a byte-order mark) makes it give up, and the
request goes the ordinary way — ``json.loads`` and the route's own pydantic model — which
answers it exactly as before, 422s included. So the kernel never accepts what the model
refuses, and what it accepts it reads to the same array (a property test holds it to that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit
from pydantic import TypeAdapter

_U128_TEXT, _U64_TEXT, _U32, _U16 = 0, 1, 2, 3
"""A field's kind: decimal text of 128 or 64 bits, or a JSON number of 32 or 16 bits."""
_KIND_OF_BITS = {128: _U128_TEXT, 64: _U64_TEXT, 32: _U32, 16: _U16}
_U128_DIGITS = 38
"""Most digits taken for a 128-bit field: 10**38 - 1 < 2**128 - 1, so nothing overflows; a
39-digit value (valid up to 2**128 - 1) goes the ordinary way, which checks its range."""
_U64_DIGITS = 19
"""Likewise for a 64-bit field (10**19 - 1 < 2**64 - 1)."""
_MIN_EVENT_BYTES = 2
"""No event is shorter than ``{}`` plus its separator: bounds the events a body can hold."""


@njit(cache=True, nogil=True)
def _space(buf: Any, i: int) -> int:  # pragma: no cover - compiled
    n = buf.shape[0]
    while i < n:
        c = buf[i]
        if c != 0x20 and c != 0x0A and c != 0x0D and c != 0x09:  # noqa: PLR1714 (numba)
            break
        i += 1
    return i


@njit(cache=True, nogil=True)
def _parse(
    buf: Any,
    root: Any,
    names: Any,
    name_start: Any,
    name_len: Any,
    kinds: Any,
    required: int,
    limit: int,
    values: Any,
    spans: Any,
) -> int:  # pragma: no cover - compiled (tests call it through ``decode``)
    """Read ``{"<root>": [event, ...]}`` from ``buf`` into ``values[event, field] = (lo,
    hi)`` and the first field's text span into ``spans[event]``; the number of events, or -1
    for anything but the plain form (see the module's description)."""
    n = buf.shape[0]
    fields = kinds.shape[0]
    i = _space(buf, 0)
    if i >= n or buf[i] != 0x7B:  # {
        return -1
    i = _space(buf, i + 1)
    if i >= n or buf[i] != 0x22:  # "
        return -1
    i += 1
    r = root.shape[0]
    if i + r >= n:
        return -1
    for j in range(r):
        if buf[i + j] != root[j]:
            return -1
    i += r
    if buf[i] != 0x22:
        return -1
    i = _space(buf, i + 1)
    if i >= n or buf[i] != 0x3A:  # :
        return -1
    i = _space(buf, i + 1)
    if i >= n or buf[i] != 0x5B:  # [
        return -1
    i = _space(buf, i + 1)
    if i >= n:
        return -1
    count = 0
    if buf[i] == 0x5D:  # ] — no events
        i += 1
    else:
        while True:
            if count >= limit or i >= n or buf[i] != 0x7B:
                return -1
            i = _space(buf, i + 1)
            seen = 0
            if i >= n or buf[i] == 0x7D:  # {} lacks the required fields
                return -1
            while True:
                # a key: bytes up to the closing quote, no escapes
                if buf[i] != 0x22:
                    return -1
                i += 1
                start = i
                while i < n and buf[i] != 0x22:
                    if buf[i] == 0x5C or buf[i] < 0x20:  # \ or a control character
                        return -1
                    i += 1
                if i >= n:
                    return -1
                length = i - start
                field = -1
                for k in range(fields):
                    if name_len[k] != length:
                        continue
                    same = True
                    s = name_start[k]
                    for j in range(length):
                        if buf[start + j] != names[s + j]:
                            same = False
                            break
                    if same:
                        field = k
                        break
                if field < 0 or (seen >> field) & 1:
                    return -1
                seen |= 1 << field
                i = _space(buf, i + 1)
                if i >= n or buf[i] != 0x3A:
                    return -1
                i = _space(buf, i + 1)
                if i >= n:
                    return -1
                kind = kinds[field]
                if kind == 0 or kind == 1:  # noqa: PLR1714 - decimal text
                    if buf[i] != 0x22:
                        return -1
                    i += 1
                    start = i
                    most = 38 if kind == 0 else 19
                    lo = np.uint64(0)
                    hi = np.uint64(0)
                    while i < n and 0x30 <= buf[i] <= 0x39:
                        d = np.uint64(buf[i] - 0x30)
                        # (hi, lo) = (hi, lo) * 10 + d, in 32-bit halves of lo
                        low = (lo & np.uint64(0xFFFFFFFF)) * np.uint64(10) + d
                        high = (lo >> np.uint64(32)) * np.uint64(10) + (low >> np.uint64(32))
                        lo = (high << np.uint64(32)) | (low & np.uint64(0xFFFFFFFF))
                        hi = hi * np.uint64(10) + (high >> np.uint64(32))
                        i += 1
                    digits = i - start
                    if i >= n or buf[i] != 0x22 or digits == 0 or digits > most:
                        return -1
                    if digits > 1 and buf[start] == 0x30:  # the pattern refuses "01"
                        return -1
                    if field == 0:
                        spans[count, 0] = start
                        spans[count, 1] = i
                    values[count, field, 0] = lo
                    values[count, field, 1] = hi
                    i += 1
                else:  # a JSON number: plain digits, no sign, fraction or exponent
                    start = i
                    number = 0
                    while i < n and 0x30 <= buf[i] <= 0x39 and i - start < 11:
                        number = number * 10 + (buf[i] - 0x30)
                        i += 1
                    digits = i - start
                    if digits == 0 or digits > 10 or i >= n:
                        return -1
                    if digits > 1 and buf[start] == 0x30:  # JSON refuses a leading zero
                        return -1
                    c = buf[i]
                    if c == 0x2E or c == 0x65 or c == 0x45:  # noqa: PLR1714 - . e E
                        return -1
                    if number > (0xFFFFFFFF if kind == 2 else 0xFFFF):
                        return -1
                    values[count, field, 0] = np.uint64(number)
                i = _space(buf, i)
                if i >= n:
                    return -1
                if buf[i] == 0x2C:  # , — another member
                    i = _space(buf, i + 1)
                    if i >= n:
                        return -1
                    continue
                if buf[i] == 0x7D:  # } — the event's end
                    break
                return -1
            if seen & required != required:
                return -1
            count += 1
            i = _space(buf, i + 1)
            if i >= n:
                return -1
            if buf[i] == 0x2C:
                i = _space(buf, i + 1)
                continue
            if buf[i] == 0x5D:
                i += 1
                break
            return -1
    i = _space(buf, i)
    if i >= n or buf[i] != 0x7D:
        return -1
    i = _space(buf, i + 1)
    if i != n:
        return -1
    return count


@njit(cache=True, nogil=True)
def _digits(out: Any, at: int, value: int) -> int:  # pragma: no cover - compiled
    """Write ``value`` (non-negative) as decimal text at ``out[at]``; the position after."""
    if value == 0:
        out[at] = 0x30
        return at + 1
    width = 0
    v = value
    while v > 0:
        width += 1
        v //= 10
    end = at + width
    v = value
    for j in range(width):
        out[end - 1 - j] = 0x30 + v % 10
        v //= 10
    return end


@njit(cache=True, nogil=True)
def _put(out: Any, at: int, text: Any, start: int, length: int) -> int:  # pragma: no cover
    for j in range(length):
        out[at + j] = text[start + j]
    return at + length


@njit(cache=True, nogil=True)
def _results(
    buf: Any,
    spans: Any,
    statuses: Any,
    stamps: Any,
    pieces: Any,
    piece_start: Any,
    piece_len: Any,
    out: Any,
) -> int:  # pragma: no cover - compiled (tests call it through ``results_json``)
    """``{"results":[{"index":i,"id":"<id>","status":"<name>","timestamp":"<t>"},...]}``
    into ``out``; its length. ``pieces`` holds the fixed texts (0-4) and then the status
    names, ``statuses`` giving each result's (its place among them, from 0)."""
    at = _put(out, 0, pieces, piece_start[0], piece_len[0])
    for i in range(statuses.shape[0]):
        if i > 0:
            out[at] = 0x2C
            at += 1
        at = _put(out, at, pieces, piece_start[1], piece_len[1])
        at = _digits(out, at, i)
        at = _put(out, at, pieces, piece_start[2], piece_len[2])
        at = _put(out, at, buf, spans[i, 0], spans[i, 1] - spans[i, 0])
        at = _put(out, at, pieces, piece_start[3], piece_len[3])
        s = 5 + statuses[i]
        at = _put(out, at, pieces, piece_start[s], piece_len[s])
        at = _put(out, at, pieces, piece_start[4], piece_len[4])
        at = _digits(out, at, stamps[i])
        out[at] = 0x22
        out[at + 1] = 0x7D
        at += 2
    out[at] = 0x5D
    out[at + 1] = 0x7D
    return at + 2


def _packed(texts: list[bytes]) -> tuple[np.ndarray[Any, Any], ...]:
    """Texts as one byte array with each one's start and length."""
    lengths = np.array([len(t) for t in texts], np.int64)
    starts = np.zeros(len(texts), np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    return np.frombuffer(b"".join(texts) or b"\0", np.uint8).copy(), starts, lengths


@dataclass(frozen=True, slots=True)
class DecodedEvents:
    """A batch read by ``decode``: the ledger's array and, for the answer, the body's bytes
    with each event's ``id`` span in it."""

    events: np.ndarray[Any, Any]
    body: np.ndarray[Any, Any]
    spans: np.ndarray[Any, Any]


class EventsDecoder:
    """The plain-form reader of one create route's body: ``{"<root>": [<typed dict>, ...]}``
    with at most ``limit`` events, into ``dtype`` (the ledger's array)."""

    def __init__(
        self,
        root: str,
        event: type,
        columns: tuple[tuple[str, int], ...],
        dtype: np.dtype[Any],
        limit: int,
        statuses: dict[int, str],
    ) -> None:
        # pydantic's own reading of the typed dict (``__required_keys__`` cannot see a
        # ``NotRequired`` under ``from __future__ import annotations``)
        schema = TypeAdapter(event).json_schema()
        if set(schema["properties"]) != {name for name, _ in columns} or columns[0][0] != "id":
            raise TypeError(f"{event.__name__}'s fields are not the columns (id first)")
        if schema.get("additionalProperties") is not False:
            raise TypeError(f"{event.__name__} must refuse other keys, as the reader does")
        required = frozenset(schema.get("required", ()))
        self.columns = columns
        self.dtype = dtype
        self.limit = limit
        self._root = np.frombuffer(root.encode(), np.uint8).copy()
        self._names, self._name_start, self._name_len = _packed([n.encode() for n, _ in columns])
        self._kinds = np.array([_KIND_OF_BITS[bits] for _, bits in columns], np.int64)
        self._required = sum(1 << k for k, (n, _) in enumerate(columns) if n in required)
        if "id" not in required:
            raise TypeError("the id must be required: the answer echoes it")
        self._status_keys = np.array(sorted(statuses), np.int64)
        names = [statuses[s].encode() for s in sorted(statuses)]
        fixed = [b'{"results":[', b'{"index":', b',"id":"', b'","status":"', b'","timestamp":"']
        self._pieces, self._piece_start, self._piece_len = _packed(fixed + names)
        self._widest = max(len(n) for n in names)
        self._sample = json.dumps(
            {root: [{n: "1" if bits >= 64 else 1 for n, bits in columns if n in required}]}
        ).encode()

    def warm_up(self) -> None:
        """Load (or compile, the first time) the kernels, so the first request does not."""
        decoded = self.decode(self._sample)
        if decoded is None:
            raise RuntimeError("the reader refuses its own sample body")
        results = np.zeros(1, [("timestamp", np.uint64), ("status", np.uint32)])
        results["status"] = self._status_keys[0]
        self.results_json(decoded, results)

    def decode(self, body: bytes) -> DecodedEvents | None:
        """The body's events as the ledger's array, or None: not the plain form (the
        ordinary way reads it, and answers any error)."""
        buf = np.frombuffer(body, np.uint8)
        room = min(self.limit, len(body) // _MIN_EVENT_BYTES + 1)
        values = np.zeros((room, len(self.columns), 2), np.uint64)
        spans = np.zeros((room, 2), np.int64)
        count = _parse(
            buf,
            self._root,
            self._names,
            self._name_start,
            self._name_len,
            self._kinds,
            self._required,
            room,
            values,
            spans,
        )
        if count < 0:
            return None
        events = np.zeros(count, self.dtype)
        for k, (name, bits) in enumerate(self.columns):
            column = values[:count, k]
            if bits == 128:
                events[name + "_lo"] = column[:, 0]
                events[name + "_hi"] = column[:, 1]
            else:
                events[name] = column[:, 0]
        return DecodedEvents(events, buf, spans[:count])

    def results_json(self, decoded: DecodedEvents, results: np.ndarray[Any, Any]) -> bytes:
        """The answer ``{"results": [...]}`` (``CreateResultsOut``, compact separators) for
        ``decoded`` 's events and the ledger's ``results`` (one per event, in order)."""
        count = len(results)
        if count != len(decoded.spans):
            raise ValueError("one result per event")
        codes = results["status"].astype(np.int64)
        names = np.searchsorted(self._status_keys, codes)
        if count and (
            names.max() >= len(self._status_keys) or (self._status_keys[names] != codes).any()
        ):
            raise ValueError("a result status without a name")
        per_result = 80 + self._widest + 39 + 20 + 10
        out = np.empty(16 + count * per_result, np.uint8)
        length = _results(
            decoded.body,
            decoded.spans,
            names,
            results["timestamp"].astype(np.int64),
            self._pieces,
            self._piece_start,
            self._piece_len,
            out,
        )
        return out[:length].tobytes()
