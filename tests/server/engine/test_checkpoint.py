"""The HF checkpoint writer and reader are inverses: what `write_checkpoint` writes loads back as the same model."""

from __future__ import annotations

import json

import pytest
import torch

from chorus_server.engine import Engine
from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.checkpoint import hf_vocab, load_backbone, write_checkpoint
from chorus_server.engine.random_model import PRESETS, randomize_


@pytest.mark.parametrize("preset", ["tiny", "tiny-mms"])
def test_write_then_read_gives_back_the_backbone_and_head(tmp_path, preset):
    config = PRESETS[preset]
    generator = torch.Generator().manual_seed(7)
    backbone = Backbone(config)
    randomize_(backbone, generator)
    vocab = Vocabulary(("<pad>", "|", "a", "b", "c"), 0, 1)
    head = {
        "lm_head.weight": torch.randn(len(vocab), config.hidden_size, generator=generator),
        "lm_head.bias": torch.randn(len(vocab), generator=generator),
    }
    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("kept")
    write_checkpoint(out, backbone, head, hf_vocab(vocab))

    loaded, loaded_head, adapter_layers = load_backbone(out, config)
    for name, tensor in backbone.state_dict().items():
        # The positional conv goes through weight norm (g, v) and back: equal up to float rounding.
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert {k: v.shape for k, v in loaded_head.items()} == {"weight": (5, config.hidden_size), "bias": (5,)}
    assert torch.equal(loaded_head["weight"], head["lm_head.weight"]) and adapter_layers == {}
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(vocab)
    assert (out / "README.md").read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    engine_model = Engine.from_pretrained(out, device="cpu")
    assert engine_model.default_adapter is not None and engine_model.default_adapter.vocab.tokens == vocab.tokens


def test_a_lower_precision_export_reads_back_close(tmp_path):
    config = PRESETS["tiny"]
    backbone = Backbone(config)
    randomize_(backbone, torch.Generator().manual_seed(1))
    write_checkpoint(tmp_path, backbone, {}, {"<pad>": 0}, dtype=torch.float16)
    loaded = load_backbone(tmp_path, config)[0]
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=2e-3, atol=2e-3, msg=name)
