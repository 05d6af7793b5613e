"""Limits on a realtime client frame, checked before it is parsed: its size in bytes, then how deeply its JSON nests.

Both checks cost one pass over the frame in C (`str.isascii`, `str.count`, a regex, numpy), so a hostile frame
is refused for about what reading it cost; `json.loads` on `"[" * 100000` would instead recurse until Python's
recursion limit and raise `RecursionError`.
"""

from __future__ import annotations

import re

import numpy as np

MAX_DEPTH = 32  # OpenAI's client events nest 5 levels deep (session.audio.input.turn_detection.type)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string, escapes included
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class FrameError(Exception):
    """A frame refused before parsing: answered with an `error` event, then the socket is closed with `close_code`."""

    def __init__(self, message: str, code: str, close_code: int):
        super().__init__(message)
        self.message, self.code, self.close_code = message, code, close_code


def frame_bytes(text: str | None, data: bytes | None) -> int:
    """The size of a text or binary frame's payload in bytes (text as UTF-8, as it came over the wire)."""
    if text is None:
        return len(data or b"")
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise FrameError(
            f"this event is {size} bytes, more than the {limit} a client event may have; send audio in smaller "
            "input_audio_buffer.append events (OpenAI's clients send 20-100 ms per event)",
            "event_too_large",
            1009,  # Message Too Big
        )


def nesting_depth(text: str) -> int:
    """How deeply the JSON in `text` nests arrays and objects (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") == 0:
        return 0
    brackets = _NOT_BRACKET.sub("", _STRING.sub('""', text)).encode("ascii")
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)  # (N,)
    return int(np.cumsum(steps).max())


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    # No JSON nests deeper than it has opening brackets: the common case costs two counts.
    if text.count("[") + text.count("{") <= limit:
        return
    depth = nesting_depth(text)
    if depth > limit:
        raise FrameError(
            f"this event's JSON nests {depth} levels deep, more than the {limit} allowed; OpenAI's client events "
            "nest at most 5",
            "invalid_json",
            1008,  # Policy Violation: no conforming client sends this
        )
