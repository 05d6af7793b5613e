"""`chorus train-classifier` end to end on a tiny random backbone: it learns a separable task, writes a classifier
file the engine and the server accept, and its training forward is the served computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from chorus_server.cli import main
from chorus_server.engine import Engine, load_adapter, pad_batch
from chorus_training.classifier import ClassifierSpec, build_classifier, classifier_logits

RATE = 16_000


def clip(label: str, seed: int) -> np.ndarray:
    """'hum': a low tone; 'hiss': white noise; random level and length."""
    rng = np.random.default_rng(seed)
    n = int(rng.uniform(0.4, 1.0) * RATE)
    level = rng.uniform(0.05, 0.3)
    if label == "hum":
        t = np.arange(n) / RATE
        return (level * np.sin(2 * np.pi * rng.uniform(100, 200) * t)).astype(np.float32)
    return (level * rng.standard_normal(n)).astype(np.float32)


def write_manifest(folder: Path, name: str, count: int, seed: int) -> Path:
    lines = []
    for i in range(count):
        label = ("hum", "hiss")[i % 2]
        soundfile.write(folder / f"{name}{i}.wav", clip(label, seed + i), RATE)
        lines.append(json.dumps({"audio": f"{name}{i}.wav", "kind": label}))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def training_args(tmp_path: Path, out: Path, steps: int) -> list[str]:
    """A tiny random backbone, hum/hiss train and test manifests, and the `train-classifier` arguments for them."""
    from chorus_server.engine.random_model import write_random_model

    write_random_model(tmp_path / "bb", "tiny", 0)
    train = write_manifest(tmp_path, "train", 24, 0)
    test = write_manifest(tmp_path, "test", 10, 1000)
    args = ["train-classifier", "--backbone", str(tmp_path / "bb"), "--manifest", str(train), "--test", str(test)]
    args += ["--label-field", "kind", "--out", str(out), "--steps", str(steps), "--eval-every", "30", "--lr", "3e-2"]
    return [*args, "--batch-seconds", "4"]


@pytest.mark.parametrize("cnn", [False, True])
def test_train_classifier_learns_and_writes_a_servable_adapter(tmp_path: Path, capsys, cnn: bool) -> None:
    out = tmp_path / "kind.safetensors"
    args = training_args(tmp_path, out, 150)
    args += ["--bottleneck-dim", "4", "--top-k", "1", "--task", "noise-id"]
    args += ["--cnn-adapters", "--cnn-dim", "4"] if cnn else []
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["labels"] == ["hiss", "hum"]
    assert summary["test_accuracy"] >= 0.8, summary  # separable: a random head scores about 0.5
    assert summary["trainable_parameters"] > 0

    engine = Engine.from_pretrained(tmp_path / "bb", device="cpu").engine
    adapter = engine.prepare(load_adapter(out))  # checks hidden size, layers, conv channels and fingerprint
    assert adapter.info.kind == "classifier" and adapter.info.task == "noise-id" and adapter.normalize_states
    assert adapter.layer_ids == (engine.config.num_hidden_layers - 1,)
    assert bool(adapter.cnn_channels) == cnn
    assert float(adapter.info.extra["valid_accuracy"]) == summary["valid_accuracy"]
    if cnn:  # continue from the written file: it starts where it stopped (its test accuracy at least as good)
        more = [*args, "--init", str(out)]
        more[more.index("--out") + 1] = str(tmp_path / "more.safetensors")
        more[more.index("--steps") + 1] = "30"
        assert main(more) == 0
        again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert again["test_accuracy"] >= 0.8 and load_adapter(tmp_path / "more.safetensors").cnn_channels


def test_training_forward_is_the_served_computation(tmp_path: Path) -> None:
    from chorus_server.engine.random_model import write_random_model

    write_random_model(tmp_path / "bb", "tiny", 0)
    engine = Engine.from_pretrained(tmp_path / "bb", device="cpu").engine
    spec = ClassifierSpec("x", bottleneck_dim=4, top_k=2, cnn_adapters=True, cnn_dim=4)
    adapter = build_classifier(engine, spec, ["a", "b", "c"], seed=0)
    with torch.no_grad():  # move every part off its identity start so each one counts
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    audios = [torch.from_numpy(clip("hum", 1)), torch.from_numpy(clip("hiss", 2))]
    waveforms, lengths = pad_batch(audios)
    adapter.requires_grad_(True)
    trained = classifier_logits(engine.backbone, adapter, waveforms, lengths)  # with autograd, as in training
    trained.sum().backward()
    assert all(p.grad is not None for p in adapter.parameters())  # every part trains, CNN adapters included
    served = engine.forward(waveforms, lengths, [engine.prepare(adapter)] * 2)
    torch.testing.assert_close(trained.detach(), torch.stack(served), rtol=1e-4, atol=1e-5)


def test_speed_perturbation_resamples_training_audio_only_within_bounds() -> None:
    from chorus_training.classifier import _batch
    from chorus_training.manifest import Example

    examples = [Example((clip("hum", seed) * 32767).astype(np.int16), "hum") for seed in range(8)]
    _, plain_lengths, _ = _batch(examples, {"hum": 0})
    assert plain_lengths.tolist() == [e.audio.size for e in examples]
    _, lengths, labels = _batch(examples, {"hum": 0}, 0.1, np.random.default_rng(0))
    ratios = [n / e.audio.size for n, e in zip(lengths.tolist(), examples, strict=True)]
    assert all(1 / 1.1 - 0.01 <= r <= 1 / 0.9 + 0.01 for r in ratios), ratios
    assert len({round(r, 3) for r in ratios}) > 4 and labels.tolist() == [0] * 8  # each its own speed


def test_a_classifier_of_the_lower_states_trains_and_serves(tmp_path: Path, capsys) -> None:
    """--mix-states 2: the mix reads the encoder input and layer 0 only (a one-pass detector: engine/routing.py)."""
    out = tmp_path / "low.safetensors"
    args = [*training_args(tmp_path, out, 120), "--mix-states", "2", "--pooling", "attentive"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy"] >= 0.8, summary
    engine = Engine.from_pretrained(tmp_path / "bb", device="cpu").engine
    adapter = engine.prepare(load_adapter(out))
    assert adapter.num_states == 2 and not adapter.layer_ids and not adapter.cnn_channels
    with pytest.raises(ValueError, match="--mix-states"):  # more states than the backbone has
        main([*args[:-4], "--mix-states", str(engine.config.num_hidden_layers + 2)])


def test_cropping_cuts_about_half_the_training_utterances_to_windows_at_least_that_long() -> None:
    from chorus_training.classifier import _batch
    from chorus_training.manifest import Example

    examples = [Example((clip("hiss", seed) * 32767).astype(np.int16), "hiss") for seed in range(40)]
    _, lengths, _ = _batch(examples, {"hiss": 0}, rng=np.random.default_rng(0), crop_seconds=0.3)
    full = [e.audio.size for e in examples]
    assert all(int(0.3 * RATE) <= n <= f for n, f in zip(lengths.tolist(), full, strict=True))
    cropped = sum(n < f for n, f in zip(lengths.tolist(), full, strict=True))
    assert 10 <= cropped <= 30, cropped
