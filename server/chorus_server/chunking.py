"""Long audio: overlapping windows whose logits are stitched back into one (T, V) sequence.

The file (or, with VAD, one speech region of it) is cut into *cores* of `chunk - 2 * stride` samples; each window is
its core plus up to `stride` samples of context on both sides. Every boundary is a multiple of the frame hop (the
backbone's `inputs_to_logits_ratio`: 320 samples for wav2vec 2.0's front end), so frame `j` of a window that starts
at sample `s` is exactly frame `s / hop + j` of the whole file. Each window keeps only the frames of its own core
(the last one keeps everything to its end), so the stitched logits have as many frames as a single pass over the
whole file would, and timestamps decoded from them are relative to the whole file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    start: int  # first sample of the window (a multiple of hop)
    stop: int  # one past its last sample
    keep_from: int  # first of its frames that belongs to the output
    keep_to: int | None  # one past the last kept frame; None: to the window's end


def plan_windows(num_samples: int, chunk: int, stride: int, hop: int) -> list[Window]:
    """Windows covering `num_samples`. `chunk` and `stride` are in samples and rounded down to the hop (samples
    per output frame)."""
    chunk, stride = chunk // hop * hop, stride // hop * hop
    core = chunk - 2 * stride
    if core < hop:
        raise ValueError(f"chunk ({chunk} samples) must exceed twice the stride ({stride}) by at least {hop}")
    if num_samples <= chunk:
        return [Window(0, num_samples, 0, None)]
    windows = []
    count = math.ceil(num_samples / core)
    for k in range(count):
        core_start, core_stop = k * core, (k + 1) * core
        start = max(0, core_start - stride)
        last = k == count - 1
        stop = num_samples if last else min(num_samples, core_stop + stride)
        keep_to = None if last else (core_stop - start) // hop
        windows.append(Window(start, stop, (core_start - start) // hop, keep_to))
    return windows


def stitch(pieces: list[torch.Tensor], windows: list[Window]) -> torch.Tensor:
    """pieces[i]: (T_i, V) logits of windows[i] -> (T, V) logits of the whole file."""
    if len(pieces) != len(windows):
        raise ValueError(f"got {len(pieces)} logit pieces for {len(windows)} windows")
    kept = [piece[w.keep_from : w.keep_to] for piece, w in zip(pieces, windows, strict=True)]
    return torch.cat(kept, dim=0)
