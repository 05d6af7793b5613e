"""An adapter version's beam-setting overrides: what an upload may set (names, types, ranges) and the
`BeamSettings` a stored version decodes with (the defaults, overridden)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from chorus_server.decoding.options import BeamSettings
from chorus_server.errors import ApiError

# name -> (integer?, lowest, highest): the ranges a version may choose (beyond them decoding is useless or slow).
BEAM_RANGES: dict[str, tuple[bool, float, float]] = {
    "beam_width": (True, 1, 512),
    "lm_weight": (False, 0.0, 10.0),
    "word_score": (False, -20.0, 20.0),
    "unk_score": (False, -100.0, 0.0),
    "unk_char_score": (False, -20.0, 0.0),
    "hotword_score": (False, 0.0, 50.0),
    "beam_threshold": (False, 0.0, 100.0),
    "beam_tokens": (True, 0, 4096),
}
assert set(BEAM_RANGES) == {f.name for f in fields(BeamSettings)}, "every beam setting has a range"


def parse_beam_overrides(form: Mapping[str, Any]) -> dict[str, float]:
    """The beam settings an upload's form sets (absent ones keep their defaults); 400 naming a bad field."""
    overrides: dict[str, float] = {}
    for name, (integer, low, high) in BEAM_RANGES.items():
        raw = form.get(name)
        if raw is None or raw == "":
            continue
        if not isinstance(raw, str):
            raise ApiError(400, f"{name} must be a number, not a file", "invalid_beam_setting", name)
        try:
            value: float = int(raw) if integer else float(raw)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ApiError(400, f"{name} must be {kind}, got {raw[:20]!r}", "invalid_beam_setting", name) from None
        if not math.isfinite(value) or not low <= value <= high:
            message = f"{name} must be between {low:g} and {high:g}, got {raw[:20]}"
            raise ApiError(400, message, "invalid_beam_setting", name)
        overrides[name] = value
    return overrides


def beam_settings(overrides: Mapping[str, Any]) -> BeamSettings:
    """A stored version's settings: its overrides on the defaults. Names this server does not know (written by a
    newer one) are ignored, and values are kept within range, so a record can never make decoding misbehave."""
    chosen: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in BEAM_RANGES or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        integer, low, high = BEAM_RANGES[name]
        if math.isfinite(value):
            clamped = min(max(value, low), high)
            chosen[name] = int(clamped) if integer else float(clamped)
    return BeamSettings(**chosen)
