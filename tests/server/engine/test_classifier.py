"""Classifier adapters: the native file round trip and validation, the layer mix read from the one backbone pass,
and mixed transcription + classification batches bitwise equal to solo runs on both backbone variants."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from chorus_server.engine import AdapterError, Engine, load_adapter, pad_batch, save_adapter
from chorus_server.engine.adapter_format import adapter_from_bytes, adapter_metadata, check_fit
from chorus_server.engine.cnn_adapters import CNN_PARTS
from chorus_server.engine.random_model import random_classifier
from chorus_server.engine.tensor_file import write_safetensors
from chorus_server.runtime import choose_dtype
from tests.server.engine.passes import forward_counting_passes

DEFAULT_DTYPE = choose_dtype("auto", torch.device("cpu"))
# The hand-computed references run the same arithmetic in another order: at bfloat16 (8 significant bits, the
# serving precision of CPUs with AVX-512 BF16) that moves a logit by about one unit in the last place.
REFERENCE_TOLERANCE = {"rtol": 1e-2, "atol": 1e-3} if DEFAULT_DTYPE == "float32" else {"rtol": 2e-2, "atol": 1e-2}


@pytest.fixture(scope="module")
def setup(random_model_dir, tmp_path_factory):
    """(engine, CTC adapters, classifier adapters): classifiers with and without bottlenecks, through the file."""
    preset, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu", dtype=DEFAULT_DTYPE).engine
    ctc = [engine.prepare(load_adapter(p)) for p in sorted((path / "adapters").glob("*.safetensors"))]
    n = engine.config.num_hidden_layers
    out = tmp_path_factory.mktemp(f"classifiers-{preset}")
    every_conv = list(range(len(engine.config.conv_dim)))
    specs = [
        ("lid", ["en", "fr", "de", "es", "it"], 0, [], 0, [], "mean"),
        ("spk", ["a", "b", "c"], 8, list(range(n)), 0, [], "attentive"),
        ("spk-cnn", ["a", "b", "c", "d"], 8, [n - 1], 4, every_conv, "mean"),  # CHAPTER: CNN adapters in the front end
    ]
    classifiers = []
    for k, (name, labels, dim, layers, cnn_dim, cnn_layers, pooling) in enumerate(specs):
        normalize = bool(cnn_layers)  # the CHAPTER one also layer-norms the states it mixes
        adapter = random_classifier(
            engine.config,
            name,
            labels,
            dim,
            layers,
            50 + k,
            engine.fingerprint,
            cnn_dim,
            cnn_layers,
            normalize,
            pooling,
        )
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


def test_classifier_mixes_at_most_every_state_of_this_backbone(setup):
    """All L + 1 states, or the first N (a detector reading the lower layers), never more than the backbone has."""
    engine = setup[0]
    n = engine.config.num_hidden_layers
    adapter = random_classifier(engine.config, "lid", ["en", "fr"], 0, [], 1, engine.fingerprint)
    check_fit(adapter, engine.config.hidden_size, n, engine.fingerprint)
    check_fit(adapter, engine.config.hidden_size, n + 1, engine.fingerprint)  # reads the lower n + 1 states only
    with pytest.raises(AdapterError, match="hidden states"):
        check_fit(adapter, engine.config.hidden_size, n - 1, engine.fingerprint)
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
    torch.testing.assert_close(logits, expected, **REFERENCE_TOLERANCE)


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
    fixed = [400, 400 + 320 * 6, 24000][: len(classifiers)]
    lengths = [int(rng.uniform(0.025, 6.0) * 16000) for _ in range(n_items - len(fixed))] + fixed
    audios = [torch.randn(n, generator=gen) * rng.uniform(0.01, 1.0) for n in lengths]
    chosen = [rng.choice(adapters) for _ in range(n_items - len(fixed))] + classifiers  # every classifier once
    batch, passes = forward_counting_passes(engine, audios, chosen)
    assert passes == 1
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
        copy.deepcopy(adapter).to(torch.float64)  # raised NotImplementedError for the CTC kinds' empty layer_weights


def test_cnn_adapters_round_trip_and_must_fit_the_front_end(setup, tmp_path):
    engine = setup[0]
    config = engine.config
    adapter = random_classifier(config, "spk", ["a", "b"], 0, [], 3, engine.fingerprint, 4, [0, 2])
    save_adapter(adapter, tmp_path / "spk.safetensors")
    loaded = load_adapter(tmp_path / "spk.safetensors")
    assert loaded.cnn_channels == {0: config.conv_dim[0], 2: config.conv_dim[2]} and loaded.cnn_dim == 4
    assert not loaded.normalize_states
    normed = random_classifier(config, "spk", ["a", "b"], 0, [], 3, engine.fingerprint, normalize_states=True)
    assert adapter_from_bytes(_file(normed)).normalize_states
    with pytest.raises(AdapterError, match="state_norm"):
        adapter_from_bytes(_file(normed, state_norm="batch"))
    assert sorted(k for k in loaded.tensors() if k.startswith("cnn.")) == sorted(
        f"cnn.{i}.{part}" for i in (0, 2) for part in CNN_PARTS
    )
    for key, tensor in adapter.tensors().items():
        assert torch.equal(loaded.tensors()[key], tensor), key
    dims = tuple(config.conv_dim)
    check_fit(loaded, config.hidden_size, config.num_hidden_layers, engine.fingerprint, dims)
    wrong = (dims[0] + 1, *dims[1:])
    for conv_dims in (wrong, dims[:2], None):
        with pytest.raises(AdapterError, match="CNN adapters"):
            check_fit(loaded, config.hidden_size, config.num_hidden_layers, engine.fingerprint, conv_dims)
    bad = _file(adapter, cnn_channels="[1]")
    with pytest.raises(AdapterError, match="cnn_layers and cnn_channels"):
        adapter_from_bytes(bad)


def test_cnn_adapters_change_the_front_end_as_written(setup):
    """Reference: the front end layer by layer with an independent CNN adapter (down, grouped conv1d of 3 taps with
    zero padding, GELU, up, residual), then the classifier's mix, pooling and head computed by hand."""
    engine, _, classifiers = setup
    adapter = next(a for a in classifiers if a.cnn_channels)
    audio = torch.randn(24000, generator=torch.Generator().manual_seed(4))
    logits = engine.forward(*pad_batch([audio]), [adapter])[0]
    from chorus_server.engine.adapters import Segment
    from chorus_server.engine.engine import normalize

    waveforms, lengths = pad_batch([audio])
    x = normalize(waveforms, lengths).to(engine.dtype)[0, :, None]  # (L, 1)
    with torch.inference_mode():
        for i, layer in enumerate(engine.backbone.feature_extractor.conv_layers):
            x = layer(x)  # (T, C)
            t = adapter.cnn(i)
            z = F.linear(x, t["down.weight"], t["down.bias"])  # (T, r)
            y = F.conv1d(z.T[None], t["conv.weight"][:, None, :], padding=1, groups=z.shape[1])[0].T
            x = x + F.linear(F.gelu(y), t["up.weight"], t["up.bias"])
        states: list[torch.Tensor] = []
        h = engine.backbone.feature_projection(x[None])  # (1, T, H)
        engine.backbone.encoder(
            h,
            [x.shape[0]],
            [Segment(0, 1, adapter)],
            None,
            lambda k, s: states.append(F.layer_norm(s.float(), (s.shape[-1],))),
        )
        assert adapter.normalize_states
        weights = F.softmax(adapter.layer_weights.float(), dim=0)
        mixed = sum(w * s for w, s in zip(weights, states, strict=True))[0]  # (T, H)
        expected = adapter.head(mixed.mean(dim=0, keepdim=True).to(engine.dtype)).float()[0]
    torch.testing.assert_close(logits, expected, **REFERENCE_TOLERANCE)
    plain = engine.forward(*pad_batch([audio]), [classifiers[1]])[0]  # CNN adapters do change the result
    assert plain.shape != logits.shape or not torch.allclose(plain, logits)


def test_attentive_pooling_weights_each_frame_by_its_score(setup, tmp_path):
    """Reference: the mixed states of a separate pass, softmax over the item's frames of `state · pool`, the
    weighted sum, the head; plus the file round trip and a bad value refused."""
    engine, _, _ = setup
    adapter = random_classifier(engine.config, "att", ["a", "b"], 0, [], 9, engine.fingerprint, pooling="attentive")
    save_adapter(adapter, tmp_path / "att.safetensors")
    loaded = engine.prepare(load_adapter(tmp_path / "att.safetensors"))
    assert (
        loaded.pooling == "attentive" and loaded.pool is not None and loaded.pool.shape == (engine.config.hidden_size,)
    )
    with pytest.raises(AdapterError, match="pooling"):
        adapter_from_bytes(_file(adapter, pooling="max"))
    audio = torch.randn(20000, generator=torch.Generator().manual_seed(5))
    logits = engine.forward(*pad_batch([audio]), [loaded])[0]
    from chorus_server.engine.engine import normalize

    waveforms, lengths = pad_batch([audio])
    states: list[torch.Tensor] = []
    with torch.inference_mode():
        batch = normalize(waveforms, lengths).to(engine.dtype)
        engine.backbone(batch, lengths, [], states_hook=lambda k, h: states.append(h.float().clone()))
        weights = F.softmax(loaded.layer_weights.float(), dim=0)
        mixed = sum(w * s for w, s in zip(weights, states, strict=True))[0]  # (T, H)
        attention = F.softmax(mixed @ loaded.pool.float(), dim=0)  # (T,)
        expected = loaded.head((attention[:, None] * mixed).sum(dim=0, keepdim=True).to(engine.dtype)).float()[0]
        mean = loaded.head(mixed.mean(dim=0, keepdim=True).to(engine.dtype)).float()[0]
    torch.testing.assert_close(logits, expected, **REFERENCE_TOLERANCE)
    assert not torch.allclose(logits, mean, rtol=1e-3, atol=1e-4)  # not the mean in disguise
