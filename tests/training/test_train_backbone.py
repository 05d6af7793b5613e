"""`chorus dev train-backbone`: from scratch and continued from an earlier export (`--init`), on a tiny manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from chorus_server.cli import main
from chorus_server.engine import Engine
from tests.training.test_train_adapter_cli import write_manifest


def train(tmp_path: Path, out: Path, *extra: str) -> float:
    manifest = write_manifest(tmp_path)
    args = ["dev", "train-backbone", "--train", str(manifest), "--valid", str(manifest), "--out", str(out)]
    args += ["--steps", "2", "--eval-every", "1", "--batch-seconds", "1", "--run-dir", str(out) + ".run", *extra]
    assert main(args) == 0
    return json.loads((Path(str(out) + ".run") / "best.json").read_text())["valid_cer"]


def test_trains_a_loadable_backbone(tmp_path: Path) -> None:
    train(tmp_path, tmp_path / "bb")
    loaded = Engine.from_pretrained(tmp_path / "bb", device="cpu")
    assert loaded.default_adapter is not None and set("abcé|") <= set(loaded.default_adapter.vocab.tokens)


def test_init_continues_from_the_given_weights(tmp_path: Path) -> None:
    train(tmp_path, tmp_path / "first")
    # A learning rate of ~0 leaves the weights where --init put them; a fresh start would not be near them.
    train(tmp_path, tmp_path / "continued", "--init", str(tmp_path / "first"), "--lr", "1e-12", "--seed", "1")
    train(tmp_path, tmp_path / "fresh", "--lr", "1e-12", "--seed", "1")
    first = load_file(tmp_path / "first" / "model.safetensors")
    continued = load_file(tmp_path / "continued" / "model.safetensors")
    fresh = load_file(tmp_path / "fresh" / "model.safetensors")
    assert first.keys() == continued.keys()
    for name, tensor in first.items():
        assert (continued[name].float() - tensor.float()).abs().max() < 1e-3, name
    head = "lm_head.weight"
    assert (fresh[head].float() - first[head].float()).abs().max() > 1e-2


def test_init_rejects_a_different_vocabulary(tmp_path: Path) -> None:
    train(tmp_path, tmp_path / "first")
    vocab_file = tmp_path / "first" / "vocab.json"
    vocab = json.loads(vocab_file.read_text())
    vocab_file.write_text(json.dumps({**vocab, "z": len(vocab)}))
    with pytest.raises(ValueError, match="differs from the vocabulary"):
        train(tmp_path, tmp_path / "second", "--init", str(tmp_path / "first"))
