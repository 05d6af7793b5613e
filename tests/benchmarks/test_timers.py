"""Benchmark timers on a GPU, simulated: they wait for the device being measured, and transformers is timed from
where Chorus is (float32 audio on the host)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import sync


def test_sync_waits_for_the_measured_device(monkeypatch):
    waited: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    sync(torch.device("cuda", 1))
    sync(torch.device("cpu"))
    assert waited == [torch.device("cuda", 1)]  # not the current GPU (a bare synchronize())


def test_transformers_is_timed_from_host_audio():
    pytest.importorskip("transformers")
    from benchmarks.backbone_speed import hf_forward

    seen: list[torch.Tensor] = []
    host = torch.randn(2, 800)
    hf_forward(seen.append, host, torch.device("cpu"), torch.bfloat16)  # type: ignore[arg-type]
    assert seen[0].dtype == torch.bfloat16  # moved and cast inside the timed call, as Chorus does
    assert host.dtype == torch.float32
