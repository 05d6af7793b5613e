"""An item's logits and text never depend on its batch-mates: mixed adapters, kinds, sizes, random lengths."""

from __future__ import annotations

import random

import pytest
import torch

from chorus_server.engine import Engine, ctc_greedy_decode, load_adapter, pad_batch

TOL = 1e-4


@pytest.fixture(scope="module")
def engine_and_adapters(random_model_dir):
    preset, path = random_model_dir
    loaded = Engine.from_pretrained(path, device="cpu")
    adapters = [loaded.engine.prepare(load_adapter(p)) for p in sorted((path / "adapters").glob("*.safetensors"))]
    assert loaded.default_adapter is not None
    adapters.append(loaded.default_adapter)
    if preset == "tiny-mms":
        import json

        vocab = json.loads((path / "vocab.json").read_text())
        adapters.append(loaded.engine.load_mms_adapter(path / "adapter.fra.safetensors", vocab, "fra"))
    return preset, loaded.engine, adapters


def test_adapter_mix_is_varied(engine_and_adapters):
    """Guard the test itself: several kinds, bottleneck sizes, vocab sizes and layer subsets are in play."""
    preset, _engine, adapters = engine_and_adapters
    kinds = {a.info.kind for a in adapters}
    assert {"houlsby", "head" if preset == "tiny" else "mms"} <= kinds
    assert len({a.bottleneck_dim for a in adapters}) >= 3
    assert len({len(a.vocab) for a in adapters}) >= 3
    assert len({a.layer_ids for a in adapters if a.layer_ids}) >= 2


def test_mixed_batch_equals_solo_runs(engine_and_adapters):
    preset, engine, adapters = engine_and_adapters
    rng = random.Random(11)
    gen = torch.Generator().manual_seed(11)
    n_items = 18
    lengths = [int(rng.uniform(0.3, 12.0) * 16000) for _ in range(n_items)]
    audios = [torch.randn(n, generator=gen) * rng.uniform(0.01, 1.0) for n in lengths]
    chosen = [rng.choice(adapters) for _ in range(n_items)]
    batch_logits = engine.forward(*pad_batch(audios), chosen)
    for audio, adapter, logits in zip(audios, chosen, batch_logits, strict=True):
        solo = engine.forward(*pad_batch([audio]), [adapter])[0]
        assert logits.shape == solo.shape
        assert logits.shape[1] == len(adapter.vocab)
        assert (logits - solo).abs().max().item() <= TOL, (preset, adapter.name)
        batch_text = ctc_greedy_decode(logits, adapter.vocab).text
        assert batch_text == ctc_greedy_decode(solo, adapter.vocab).text


def test_adapters_change_output(engine_and_adapters):
    """Same audio through different adapters gives different logits: the adapters really act."""
    _, engine, adapters = engine_and_adapters
    audio = torch.randn(16000, generator=torch.Generator().manual_seed(5))
    bottlenecked = [a for a in adapters if a.layer_ids]
    outputs = engine.forward(*pad_batch([audio] * len(bottlenecked)), bottlenecked)
    # Compare the shared blank column (id 0) so different vocab sizes do not matter.
    blanks = [o[:, 0] for o in outputs]
    for i in range(1, len(blanks)):
        assert (blanks[i] - blanks[0]).abs().max().item() > 1e-3


def test_batch_order_does_not_matter(engine_and_adapters):
    _, engine, adapters = engine_and_adapters
    gen = torch.Generator().manual_seed(9)
    audios = [torch.randn(n, generator=gen) for n in (4000, 30000, 800, 17000, 401)]
    chosen = [adapters[i % len(adapters)] for i in range(5)]
    forward = engine.forward(*pad_batch(audios), chosen)
    backward = engine.forward(*pad_batch(audios[::-1]), chosen[::-1])[::-1]
    for a, b in zip(forward, backward, strict=True):
        assert (a - b).abs().max().item() <= TOL
