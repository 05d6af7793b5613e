"""Reduced precision: bf16 logits stay close to fp32 and stay batch-invariant within bf16 tolerance."""

from __future__ import annotations

import torch

from chorus_server.engine import Engine, load_adapter, pad_batch


def test_bf16_close_to_fp32_and_invariant(random_model_dir):
    _, path = random_model_dir
    fp32 = Engine.from_pretrained(path, device="cpu", dtype="float32")
    bf16 = Engine.from_pretrained(path, device="cpu", dtype="bfloat16")
    assert bf16.engine.fingerprint == fp32.engine.fingerprint  # identity of the weights, not of the dtype
    adapter_file = sorted((path / "adapters").glob("*.safetensors"))[0]
    a32, a16 = fp32.engine.prepare(load_adapter(adapter_file)), bf16.engine.prepare(load_adapter(adapter_file))
    gen = torch.Generator().manual_seed(0)
    audios = [torch.randn(n, generator=gen) for n in (16000, 5000, 40000)]
    ref = fp32.engine.forward(*pad_batch(audios), [a32] * 3)
    low = bf16.engine.forward(*pad_batch(audios), [a16] * 3)
    for r, lo in zip(ref, low, strict=True):
        assert lo.dtype == torch.float32 and lo.shape == r.shape
        rel = (lo - r).abs().max() / r.abs().max()
        assert rel.item() < 0.1
    solo = bf16.engine.forward(*pad_batch(audios[1:2]), [a16])[0]
    assert (solo - low[1]).abs().max().item() < 0.05 * low[1].abs().max().item()
