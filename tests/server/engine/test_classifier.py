"""Classifier adapters: the native file round trip and validation, the layer mix read from the one backbone pass,
and mixed transcription + classification batches bitwise equal to solo runs on both backbone variants."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from chorus_server.engine import AdapterError, Engine, load_adapter, pad_batch, save_adapter
from chorus_server.engine.adapter_format import adapter_from_bytes, adapter_metadata, check_fit
from chorus_server.engine.random_model import random_classifier
from chorus_server.engine.tensor_file import write_safetensors
from chorus_server.runtime import choose_dtype

DEFAULT_DTYPE = choose_dtype("auto", torch.device("cpu"))


@pytest.fixture(scope="module")
def setup(random_model_dir, tmp_path_factory):
    """(engine, CTC adapters, classifier adapters): classifiers with and without bottlenecks, through the file."""
    preset, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu", dtype=DEFAULT_DTYPE).engine
    ctc = [engine.prepare(load_adapter(p)) for p in sorted((path / "adapters").glob("*.safetensors"))]
    n = engine.config.num_hidden_layers
    out = tmp_path_factory.mktemp(f"classifiers-{preset}")
    specs = [("lid", ["en", "fr", "de", "es", "it"], 0, []), ("spk", ["a", "b", "c"], 8, list(range(n)))]
    classifiers = []
    for k, (name, labels, dim, layers) in enumerate(specs):
        adapter = random_classifier(engine.config, name, labels, dim, layers, 50 + k, engine.fingerprint)
        save_adapter(adapter, out / f"{name}.safetensors")
        classifiers.append(engine.prepare(load_adapter(out / f"{name}.safetensors")))
    return engine, ctc, classifiers


def test_file_round_trip_keeps_kind_labels_and_tensors(setup, tmp_path):
    engine = setup[0]
    adapter = random_classifier(engine.config, "lid", ["en", "fr"], 4, [0], 1, engine.fingerprint)
    save_adapter(adapter, tmp_path / "lid.safetensors")
    loaded = load_adapter(tmp_path / "lid.safetensors")
    assert loaded.info.kind == "classifier" and loaded.info.task == "classify"
    assert loaded.labels == ("en", "fr") and loaded.num_states == engine.config.num_hidden_layers + 1
    for key, tensor in adapter.tensors().items():
        assert torch.equal(loaded.tensors()[key], tensor), key
    assert "layer_weights" in loaded.tensors()


def _file(adapter, **meta) -> bytearray:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.safetensors"
        tensors = {k: v.detach().contiguous() for k, v in adapter.tensors().items()}
        write_safetensors(path, tensors, {**adapter_metadata(adapter), **meta})
        return bytearray(path.read_bytes())


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"labels": "[]"}, "vocabulary is empty"),
        ({"labels": '["en", "en"]'}, "duplicate"),
        ({"labels": '["en", ""]'}, "non-empty"),
        ({"labels": '{"en": 1}'}, "JSON list of strings"),
        ({"num_states": "x"}, "invalid adapter metadata"),
        ({"num_states": "4"}, "shape"),
    ],
)
def test_bad_classifier_files_are_rejected(setup, meta, message):
    engine = setup[0]
    adapter = random_classifier(engine.config, "lid", ["en", "fr", "de"], 0, [], 1, engine.fingerprint)
    if meta.get("num_states") == "4" and engine.config.num_hidden_layers + 1 == 4:
        meta = {"num_states": "5"}
    with pytest.raises(AdapterError, match=message):
        adapter_from_bytes(_file(adapter, **meta))


def test_classifier_must_mix_every_state_of_this_backbone(setup):
    engine = setup[0]
    n = engine.config.num_hidden_layers
    adapter = random_classifier(engine.config, "lid", ["en", "fr"], 0, [], 1, engine.fingerprint)
    check_fit(adapter, engine.config.hidden_size, n, engine.fingerprint)
    with pytest.raises(AdapterError, match="hidden states"):
        check_fit(adapter, engine.config.hidden_size, n + 1, engine.fingerprint)
    with pytest.raises(AdapterError, match="trained for backbone"):
        check_fit(adapter, engine.config.hidden_size, n, "other")


def test_scores_are_the_mixed_states_pooled_over_valid_frames(setup):
    """Reference: every hidden state from a separate per-layer pass, mixed, mean over the valid frames, head."""
    engine, _, classifiers = setup
    adapter = classifiers[0]  # no bottlenecks: the hidden states are the plain backbone's
    audio = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    logits = engine.forward(*pad_batch([audio]), [adapter])[0]
    assert logits.shape == (len(adapter.labels),)
    states: list[torch.Tensor] = []
    waveforms, lengths = pad_batch([audio])
    from chorus_server.engine.engine import normalize

    batch = normalize(waveforms, lengths).to(engine.dtype)
    with torch.inference_mode():
        engine.backbone(batch, lengths, [], states_hook=lambda k, h: states.append(h.float().clone()))
    assert len(states) == engine.config.num_hidden_layers + 1
    weights = F.softmax(adapter.layer_weights.float(), dim=0)
    mixed = sum(w * s for w, s in zip(weights, states, strict=True))[0]  # (T, H)
    expected = adapter.head(mixed.mean(dim=0, keepdim=True).to(engine.dtype)).float()[0]
    torch.testing.assert_close(logits, expected, rtol=1e-2, atol=1e-3)


def test_too_short_item_gets_no_scores(setup):
    engine, ctc, classifiers = setup
    out = engine.forward(*pad_batch([torch.zeros(300), torch.randn(8000)]), [classifiers[0], ctc[0]])
    assert out[0].shape == (0,)
    assert out[1].dim() == 2 and out[1].shape[0] > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_mixed_transcription_and_classification_is_bitwise_equal_to_solo(setup, seed):
    """One backbone pass for CTC and classifier items together; each item's output is its solo output, bit for bit."""
    engine, ctc, classifiers = setup
    adapters = ctc + classifiers
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    n_items = 10
    # Down to 1 frame (0.025 s): short solo items run on at least 16 frames, like batched ones (MIN_CPU_FRAMES).
    lengths = [int(rng.uniform(0.025, 6.0) * 16000) for _ in range(n_items - 2)] + [400, 400 + 320 * 6]
    audios = [torch.randn(n, generator=gen) * rng.uniform(0.01, 1.0) for n in lengths]
    chosen = [rng.choice(adapters) for _ in range(n_items - 2)] + classifiers  # every classifier at least once
    calls = []
    original = engine.backbone.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    engine.backbone.forward = counting  # type: ignore[method-assign]
    try:
        batch = engine.forward(*pad_batch(audios), chosen)
    finally:
        del engine.backbone.forward
    assert len(calls) == 1
    for audio, adapter, logits in zip(audios, chosen, batch, strict=True):
        solo = engine.forward(*pad_batch([audio]), [adapter])[0]
        assert logits.shape == ((len(adapter.labels),) if adapter.is_classifier else solo.shape)
        assert torch.equal(logits, solo), (DEFAULT_DTYPE, adapter.name, len(audio), (logits - solo).abs().max())
    assert {a.info.kind for a in chosen} >= {"classifier", "houlsby"}


def test_loaded_adapters_of_every_kind_hold_no_meta_tensor(setup, random_model_dir):
    """Files load through a meta-device skeleton; nothing of it may survive (`.to()` cannot copy a meta tensor)."""
    _, ctc, classifiers = setup
    path = random_model_dir[1]
    for adapter in [load_adapter(p) for p in sorted((path / "adapters").glob("*.safetensors"))] + [*ctc, *classifiers]:
        assert not any(p.is_meta for p in adapter.parameters()), adapter.name
        adapter.to(torch.float64)  # raised NotImplementedError for the CTC kinds' empty layer_weights
