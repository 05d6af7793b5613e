"""Window planning: hop-aligned windows whose kept frames tile the whole file's frames exactly."""

from __future__ import annotations

import pytest
import torch

from chorus_server.chunking import plan_windows, stitch

HOP, FIELD = 320, 400


def frames(samples: int) -> int:
    return 0 if samples < FIELD else (samples - FIELD) // HOP + 1


@pytest.mark.parametrize("length", [400, 16000, 160_000, 160_001, 321_123, 1_440_000, 1_440_399, 2_000_079])
@pytest.mark.parametrize(("chunk", "stride"), [(160_000, 32_000), (320_000, 48_000), (96_000, 320)])
def test_kept_frames_tile_the_whole_file(length, chunk, stride):
    windows = plan_windows(length, chunk, stride, 320)
    next_frame = 0
    for w in windows:
        assert w.start % HOP == 0 and w.stop - w.start <= chunk + 2 * HOP
        available = frames(w.stop - w.start)
        keep_to = available if w.keep_to is None else w.keep_to
        assert keep_to <= available, "a window must hold every frame it keeps"
        first_global = w.start // HOP + w.keep_from
        assert first_global == next_frame, "kept frames are contiguous across windows"
        next_frame = first_global + max(0, keep_to - w.keep_from)
    assert next_frame == frames(length)


def test_short_audio_is_one_window():
    assert plan_windows(1000, 160_000, 32_000, 320) == [plan_windows(1000, 160_000, 32_000, 320)[0]]
    assert plan_windows(1000, 160_000, 32_000, 320)[0].keep_to is None


def test_stitch_keeps_each_core_once():
    windows = plan_windows(1_000_000, 160_000, 32_000, 320)
    pieces = []
    for w in windows:  # logits whose single feature is the global frame index
        index = torch.arange(frames(w.stop - w.start)) + w.start // HOP
        pieces.append(index[:, None].float())
    stitched = stitch(pieces, windows)
    assert stitched[:, 0].tolist() == list(range(frames(1_000_000)))


def test_invalid_geometry_is_refused():
    with pytest.raises(ValueError, match="twice the stride"):
        plan_windows(10**6, 64_000, 32_000, 320)
