"""At the precision the server runs on this CPU, an item's logits are bitwise identical alone and in any mixed batch.

Random lengths (so items are padded by different amounts), every adapter kind the preset has (houlsby of several
bottleneck sizes and layer subsets, head-only or MMS), both backbone variants (post-LN with GroupNorm, pre-LN with
LayerNorm front end). Bitwise, not within a tolerance: a user's transcript must not depend on who else was batched.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from chorus_server.engine import Engine, load_adapter, pad_batch
from chorus_server.runtime import choose_dtype

DEFAULT_DTYPE = choose_dtype("auto", torch.device("cpu"))


@pytest.fixture(scope="module")
def engine_and_adapters(random_model_dir):
    preset, path = random_model_dir
    loaded = Engine.from_pretrained(path, device="cpu", dtype=DEFAULT_DTYPE)
    engine = loaded.engine
    adapters = [engine.prepare(load_adapter(p)) for p in sorted((path / "adapters").glob("*.safetensors"))]
    assert loaded.default_adapter is not None
    adapters.append(loaded.default_adapter)
    if preset == "tiny-mms":
        vocab = json.loads((path / "vocab.json").read_text())
        adapters.append(engine.load_mms_adapter(path / "adapter.fra.safetensors", vocab, "fra"))
    kinds = {a.info.kind for a in adapters}
    assert {"houlsby", "head" if preset == "tiny" else "mms"} <= kinds
    return engine, adapters


@pytest.mark.parametrize("seed", [1, 2])
def test_mixed_batch_is_bitwise_equal_to_solo_runs(engine_and_adapters, seed):
    engine, adapters = engine_and_adapters
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    n_items = 10
    lengths = [int(rng.uniform(0.05, 9.0) * 16000) for _ in range(n_items)]
    audios = [torch.randn(n, generator=gen) * rng.uniform(0.01, 1.0) for n in lengths]
    chosen = [rng.choice(adapters) for _ in range(n_items)]
    batch = engine.forward(*pad_batch(audios), chosen)
    for audio, adapter, logits in zip(audios, chosen, batch, strict=True):
        solo = engine.forward(*pad_batch([audio]), [adapter])[0]
        assert torch.equal(logits, solo), (DEFAULT_DTYPE, adapter.name, len(audio), (logits - solo).abs().max())


def test_sub_batches_and_orders_are_bitwise_equal(engine_and_adapters):
    """The same item in batches of different sizes, positions and padded lengths gives the same bits."""
    engine, adapters = engine_and_adapters
    gen = torch.Generator().manual_seed(7)
    audios = [torch.randn(n, generator=gen) for n in (24000, 3000, 80000, 401, 16000, 47999)]
    chosen = [adapters[i % len(adapters)] for i in range(len(audios))]
    full = engine.forward(*pad_batch(audios), chosen)
    reversed_ = engine.forward(*pad_batch(audios[::-1]), chosen[::-1])[::-1]
    pairs = [engine.forward(*pad_batch(audios[i : i + 2]), chosen[i : i + 2]) for i in range(0, len(audios), 2)]
    for i, logits in enumerate(full):
        assert torch.equal(logits, reversed_[i])
        assert torch.equal(logits, pairs[i // 2][i % 2])


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 7, 9, 11])
def test_short_items_alone_are_bitwise_equal_to_batched(engine_and_adapters, frames):
    """An item of a few frames alone used to run GEMMs of that few rows, which take another kernel on the CPU (other
    bits for a row) than the same rows inside a batch; the transformer now runs on at least 16 frames."""
    engine, adapters = engine_and_adapters
    gen = torch.Generator().manual_seed(frames)
    samples = 400 + 320 * (frames - 1)  # exactly `frames` output frames
    assert int(engine.frame_lengths(torch.tensor([samples]))[0]) == frames
    short = torch.randn(samples, generator=gen)
    for adapter in adapters:
        solo = engine.forward(*pad_batch([short]), [adapter])[0]
        batched = engine.forward(*pad_batch([torch.randn(48000, generator=gen), short]), [adapters[0], adapter])[1]
        assert solo.shape[0] == frames
        assert torch.equal(solo, batched), (adapter.name, frames, (solo - batched).abs().max())
