"""Chorus logits equal transformers' logits for the same weights (both backbone variants, fp32)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from chorus_server.engine import Engine, pad_batch
from chorus_server.engine.engine import normalize

TOL = 1e-4


def hf_logits(model, audio: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(audio, attention_mask=attention_mask).logits


def test_single_item_parity(hf_model_dir):
    variant, model, path = hf_model_dir
    loaded = Engine.from_pretrained(path, device="cpu")
    assert loaded.default_adapter is not None
    gen = torch.Generator().manual_seed(1)
    for seconds in (0.3, 1.7, 4.0):
        audio = torch.randn(int(seconds * 16000), generator=gen) * 0.3
        waveforms, lengths = pad_batch([audio])
        ours = loaded.engine.forward(waveforms, lengths, [loaded.default_adapter])[0]
        ref = hf_logits(model, normalize(waveforms, lengths))[0]
        assert ours.shape == ref.shape, variant
        assert (ours - ref).abs().max().item() <= TOL, variant


def test_padded_batch_parity_with_attention_mask(tmp_path):
    """Layer-norm front ends are padding-invariant in transformers too, so padded batches must match it.
    (transformers' GroupNorm front end sees padding; that variant is checked against solo runs instead.)"""
    from tests.conftest import build_hf_model, save_hf_model

    model = build_hf_model("pre-ln", seed=4)
    path = save_hf_model(model, tmp_path)
    loaded = Engine.from_pretrained(path, device="cpu")
    gen = torch.Generator().manual_seed(2)
    audios = [torch.randn(n, generator=gen) for n in (16000, 9000, 23456)]
    waveforms, lengths = pad_batch(audios)
    mask = (torch.arange(waveforms.shape[1])[None] < lengths[:, None]).long()
    ref = hf_logits(model, normalize(waveforms, lengths), mask)
    ours = loaded.engine.forward(waveforms, lengths, [loaded.default_adapter] * 3)
    frames = loaded.engine.frame_lengths(lengths)
    for i, logits in enumerate(ours):
        assert logits.shape[0] == int(frames[i])
        assert (logits - ref[i, : logits.shape[0]]).abs().max().item() <= TOL


@pytest.mark.parametrize("naming", ["weight_g/weight_v", "pytorch_model.bin", "conv_bias_off"])
def test_checkpoint_layouts_load(tmp_path, naming):
    """Old weight-norm names, a weights-only .bin, and conv_bias off all load and match transformers."""
    from tests.conftest import build_hf_model, save_hf_model

    model = build_hf_model("pre-ln", seed=5)
    if naming == "conv_bias_off":
        from transformers import Wav2Vec2ForCTC

        config = model.config
        config.conv_bias = False
        torch.manual_seed(5)
        model = Wav2Vec2ForCTC(config).eval()
    path = save_hf_model(model, tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    if naming == "weight_g/weight_v":
        prefix = "wav2vec2.encoder.pos_conv_embed.conv."
        tensors[prefix + "weight_g"] = tensors.pop(prefix + "parametrizations.weight.original0")
        tensors[prefix + "weight_v"] = tensors.pop(prefix + "parametrizations.weight.original1")
        save_file(tensors, str(path / "model.safetensors"))
    elif naming == "pytorch_model.bin":
        (path / "model.safetensors").unlink()
        torch.save(tensors, str(path / "pytorch_model.bin"))
    loaded = Engine.from_pretrained(path, device="cpu")
    audio = torch.randn(1, 12000, generator=torch.Generator().manual_seed(3))
    ours = loaded.engine.forward(audio, torch.tensor([12000]), [loaded.default_adapter])[0]
    ref = hf_logits(model, normalize(audio, torch.tensor([12000])))[0]
    assert (ours - ref).abs().max().item() <= TOL


def test_mms_adapter_matches_transformers_load_adapter(tmp_path):
    """An `adapter.<lang>.safetensors` file gives the same logits in Chorus as after HF's `load_adapter`."""
    from transformers import Wav2Vec2ForCTC

    from tests.conftest import VOCAB, build_hf_model, save_hf_model

    model = build_hf_model("pre-ln", seed=7)
    path = save_hf_model(model, tmp_path)
    # A French adapter: new adapter weights and a smaller vocabulary / head.
    fra_vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", *"aeiouéèàçnrst"]
    gen = torch.Generator().manual_seed(8)
    adapter_tensors = {}
    for name, param in model.named_parameters():
        if "adapter_layer" in name:
            adapter_tensors[name] = param.detach() + 0.3 * torch.randn(param.shape, generator=gen)
    adapter_tensors["lm_head.weight"] = torch.randn(len(fra_vocab), 32, generator=gen) * 0.2
    adapter_tensors["lm_head.bias"] = torch.randn(len(fra_vocab), generator=gen) * 0.1
    save_file(adapter_tensors, str(path / "adapter.fra.safetensors"))
    nested = {"eng": {t: i for i, t in enumerate(VOCAB)}, "fra": {t: i for i, t in enumerate(fra_vocab)}}
    (path / "vocab.json").write_text(json.dumps(nested))

    loaded = Engine.from_pretrained(path, device="cpu")
    fra = loaded.engine.load_mms_adapter(path / "adapter.fra.safetensors", nested, "fra")
    assert fra.vocab.tokens == tuple(fra_vocab)
    audio = torch.randn(1, 20000, generator=gen)
    lengths = torch.tensor([20000])
    eng_ours, fra_ours = loaded.engine.forward(audio.repeat(2, 1), lengths.repeat(2), [loaded.default_adapter, fra])

    hf = Wav2Vec2ForCTC.from_pretrained(str(path)).eval()
    eng_ref = hf_logits(hf, normalize(audio, lengths))[0]
    hf.load_adapter("fra")
    fra_ref = hf_logits(hf, normalize(audio, lengths))[0]
    assert (eng_ours - eng_ref).abs().max().item() <= TOL
    assert fra_ref.shape[-1] == len(fra_vocab)
    assert (fra_ours - fra_ref).abs().max().item() <= TOL
    assert (fra_ours[:, :5] - eng_ours[:, :5]).abs().max().item() > 1e-2  # the adapter really changed the output
