"""Bad audio and bad adapter files fail clearly, never with a crash or NaN."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from chorus_server.engine import AdapterError, CheckpointError, Engine, InputError, load_adapter, pad_batch
from tests.helpers import rebuild_safetensors


@pytest.fixture(scope="module")
def loaded(random_model_dir):
    _, path = random_model_dir
    result = Engine.from_pretrained(path, device="cpu")
    return result.engine, result.default_adapter, path


@pytest.mark.parametrize("samples", [0, 1, 399])
def test_too_short_audio_gives_empty_transcript(loaded, samples):
    engine, adapter, _ = loaded
    normal = torch.randn(8000)
    short = torch.randn(samples)
    results = engine.transcribe([short, normal], [adapter, adapter])
    assert results[0].text == "" and results[0].frames == 0
    assert results[1].frames == 24
    logits = engine.forward(*pad_batch([short]), [adapter])[0]
    assert logits.shape == (0, len(adapter.vocab))


def test_exactly_one_frame(loaded):
    engine, adapter, _ = loaded
    logits = engine.forward(*pad_batch([torch.randn(400)]), [adapter])[0]
    assert logits.shape == (1, len(adapter.vocab)) and bool(torch.isfinite(logits).all())


def test_silence_is_finite(loaded):
    """All-zero audio (zero variance) must not produce NaN through normalisation."""
    engine, adapter, _ = loaded
    logits = engine.forward(*pad_batch([torch.zeros(16000)]), [adapter])[0]
    assert bool(torch.isfinite(logits).all())


@pytest.mark.parametrize(
    ("waveforms", "lengths", "message"),
    [
        (torch.zeros(2, 1, 800), torch.tensor([800, 800]), "expected mono"),
        (torch.zeros(2, 800), torch.tensor([800]), "expected lengths"),
        (torch.zeros(2, 800), torch.tensor([800, 801]), "lengths must lie"),
        (torch.tensor([[float("nan")] * 800]), torch.tensor([800]), "NaN or Inf"),
    ],
)
def test_malformed_batches_are_rejected(loaded, waveforms, lengths, message):
    engine, adapter, _ = loaded
    with pytest.raises(InputError, match=message):
        engine.forward(waveforms, lengths, [adapter] * waveforms.shape[0])


def test_unprepared_adapter_is_rejected(loaded):
    engine, _, path = loaded
    raw = load_adapter(next((path / "adapters").glob("*.safetensors"))).to(torch.float64)
    with pytest.raises(AdapterError, match="not prepared"):
        engine.forward(torch.zeros(1, 800), torch.tensor([800]), [raw])


def _rewrite(src, dst, edit_tensors=None, edit_meta=None):
    dst.write_bytes(rebuild_safetensors(src, edit_tensors, edit_meta))
    return dst


def _first_key(tensors, needle):
    return next(k for k in sorted(tensors) if needle in k)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_key", "missing keys"),
        ("extra_key", "unexpected keys"),
        ("wrong_shape", "has shape"),
        ("nan", "NaN or Inf"),
        ("int_dtype", "dtype I32; adapters hold F32, F16 or BF16"),
        ("bad_vocab", "duplicate tokens"),
        ("head_vocab_mismatch", "has shape"),
        ("not_chorus", "not a Chorus adapter"),
    ],
)
def test_hostile_adapter_files(loaded, tmp_path, case, message):
    _, _, path = loaded
    src = sorted((path / "adapters").glob("*.safetensors"))[0]
    dst = tmp_path / "bad.safetensors"
    edits = {
        "missing_key": dict(edit_tensors=lambda t: t.pop(_first_key(t, "down.weight"))),
        "extra_key": dict(edit_tensors=lambda t: t.update({"layers.0.attn.gate.weight": torch.zeros(1)})),
        "wrong_shape": dict(edit_tensors=lambda t: t.update({_first_key(t, "up.weight"): torch.zeros(3, 3)})),
        "nan": dict(edit_tensors=lambda t: t[_first_key(t, "head.bias")].fill_(float("nan"))),
        "int_dtype": dict(edit_tensors=lambda t: t.update({"head.bias": t["head.bias"].to(torch.int32)})),
        "bad_vocab": dict(edit_meta=lambda m: m.update(vocab=json.dumps(["<pad>", "a", "a"] + ["b"] * 0))),
        "head_vocab_mismatch": dict(edit_meta=lambda m: m.update(vocab=json.dumps([*json.loads(m["vocab"]), "zz"]))),
        "not_chorus": dict(edit_meta=lambda m: m.update(format="something-else")),
    }
    _rewrite(src, dst, **edits[case])
    with pytest.raises(AdapterError, match=message):
        load_adapter(dst)


def test_truncated_and_non_safetensors_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04pickle-not-safetensors")
    with pytest.raises(AdapterError, match="cannot read adapter file"):
        load_adapter(garbage)


def test_wrong_fingerprint_and_geometry(loaded):
    engine, _, path = loaded
    adapter = load_adapter(sorted((path / "adapters").glob("*.safetensors"))[0])
    engine.prepare(adapter)  # fits as written
    adapter.info = dataclasses.replace(adapter.info, backbone_fingerprint="w2v2-000000000000000000000000")
    with pytest.raises(AdapterError, match="was trained for backbone w2v2-0000"):
        engine.prepare(adapter)
    engine.prepare(adapter, check_fingerprint=False)  # explicit operator override


def test_adapter_for_other_hidden_size_is_rejected(loaded, tmp_path):
    from chorus_server.engine.random_model import random_adapter

    engine, _, _ = loaded
    other = dataclasses.replace(engine.config, hidden_size=48)
    adapter = random_adapter(other, "houlsby", "x", 4, [0], 5, 0, engine.fingerprint)
    with pytest.raises(AdapterError, match="hidden size 48"):
        engine.prepare(adapter)
    too_deep = random_adapter(
        engine.config, "houlsby", "y", 4, [engine.config.num_hidden_layers], 5, 0, engine.fingerprint
    )
    with pytest.raises(AdapterError, match="names layers"):
        engine.prepare(too_deep)


def test_checkpoint_with_missing_tensor(tmp_path, random_model_dir):
    _, path = random_model_dir
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    from safetensors.torch import load_file

    tensors = load_file(str(broken / "model.safetensors"))
    tensors.pop("wav2vec2.encoder.layers.0.attention.k_proj.weight")
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \['encoder.layers.0.attention.k_proj.weight'\]"):
        Engine.from_pretrained(broken, device="cpu")
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        Engine.from_pretrained(broken, device="cpu")
