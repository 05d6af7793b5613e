"""`chorus train-classifier`: an utterance classifier adapter on the frozen backbone.

What trains (the SUPERB recipe, with the adapter options of the seed paper and CHAPTER): the softmax weights of
the layer mix (one per hidden state), a linear head over the labels on the mean-pooled mix, optionally Houlsby
bottlenecks in the top K transformer layers (`bottleneck_dim > 0`) and CNN adapters after every conv layer of the
front end (`cnn_adapters`). The forward pass is the server's own (`Backbone.forward` with a `LayerMix`, then
`classify`), so what is trained is what is served. Labels come from a field of the manifests (`label` by
default: `lang` or `voice` for `chorus dev make-corpus` manifests); the best weights by validation accuracy are
written as a native adapter file, ready for upload.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soxr
import torch
import torch.nn.functional as F

from chorus_server.engine.adapter_format import load_adapter, save_adapter
from chorus_server.engine.adapters import CLASSIFIER, Adapter, AdapterInfo, Segment, Vocabulary
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.classify import LayerMix, classify
from chorus_server.engine.engine import Engine, normalize, pad_batch
from chorus_training.loop import TrainConfig, learning_rate, make_batches
from chorus_training.manifest import SAMPLE_RATE, Example, load_examples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierSpec:
    name: str
    task: str = "classify"  # stored in the file: e.g. "language-id", "speaker-id"
    bottleneck_dim: int = 0  # Houlsby bottlenecks in the transformer; 0: none
    top_k: int | None = None  # with bottlenecks: only the top K layers (None: all)
    cnn_adapters: bool = False  # CHAPTER: CNN adapters after every conv layer of the front end
    cnn_dim: int = 16
    pooling: str = "mean"  # or "attentive"
    num_states: int | None = None  # mix only the first N hidden states (a one-pass detector); None: all L + 1


@dataclass(frozen=True)
class ClassifierResult:
    valid_accuracy: float
    labels: tuple[str, ...]
    trainable_parameters: int
    backbone_parameters: int
    steps: int
    minutes: float

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / self.backbone_parameters


def load_labelled(paths: Sequence[Path], field: str) -> list[Example]:
    """Every manifest's utterances with `Example.text` = the row's `field` (the label)."""
    return [example for path in paths for example in load_examples(path, field=field)]


def build_classifier(engine: Engine, spec: ClassifierSpec, labels: Sequence[str], seed: int) -> Adapter:
    """A fresh classifier adapter: uniform layer mix, small random head, bottlenecks and CNN adapters at identity."""
    config = engine.config
    layers = config.num_hidden_layers
    top_k = layers if spec.top_k is None else spec.top_k
    if spec.bottleneck_dim and not 1 <= top_k <= layers:
        raise ValueError(f"--top-k must lie in [1, {layers}] for this backbone, got {top_k}")
    states = layers + 1 if spec.num_states is None else spec.num_states
    if not 2 <= states <= layers + 1:
        raise ValueError(f"--mix-states must lie in [2, {layers + 1}] for this backbone, got {states}")
    info = AdapterInfo(name=spec.name, kind=CLASSIFIER, task=spec.task, backbone_fingerprint=engine.fingerprint)
    cnn = dict(enumerate(config.conv_dim)) if spec.cnn_adapters else {}
    adapter = Adapter(
        info,
        Vocabulary.of_labels(labels),
        config.hidden_size,
        spec.bottleneck_dim,
        range(layers - top_k, layers) if spec.bottleneck_dim else (),
        states,
        cnn,
        spec.cnn_dim,
        normalize_states=True,
        pooling=spec.pooling,
    )
    return adapter.reset_parameters(torch.Generator().manual_seed(seed))


def classifier_logits(
    backbone: Backbone, adapter: Adapter, waveforms: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """The served computation, differentiable in the adapter: waveforms (B, L) raw, lengths (B,) -> (B, labels)."""
    segments = [Segment(0, waveforms.shape[0], adapter)]
    mix = LayerMix(segments)
    _, frames = backbone(normalize(waveforms, lengths), lengths, segments, states_hook=mix)
    return classify(mix.mixed(segments[0]), frames.tolist(), adapter.head, adapter.pool)


def _batch(
    examples: Sequence[Example],
    index: dict[str, int],
    perturb: float = 0.0,
    rng: np.random.Generator | None = None,
    crop_seconds: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> waveforms (B, L), lengths (B,), label ids (B,). `perturb` > 0: each utterance played at a random speed in
    [1 - perturb, 1 + perturb] (resampled: pitch, formants and tempo move together, a new voice in effect).
    `crop_seconds` > 0: half the utterances cut to a random window of at least that long (short clips are where a
    classifier errs most; cropping makes every training utterance teach them too)."""
    audios = [e.audio.astype(np.float32) / 32768.0 for e in examples]
    if perturb > 0 and rng is not None:
        speeds = [rng.uniform(1 - perturb, 1 + perturb) for _ in audios]
        audios = [soxr.resample(a, SAMPLE_RATE, int(SAMPLE_RATE / v)) for a, v in zip(audios, speeds, strict=True)]
    if crop_seconds > 0 and rng is not None:
        audios = [_random_crop(a, int(crop_seconds * SAMPLE_RATE), rng) for a in audios]
    waveforms, lengths = pad_batch(audios)
    return waveforms, lengths, torch.tensor([index[e.text] for e in examples])


def _random_crop(audio: np.ndarray, shortest: int, rng: np.random.Generator) -> np.ndarray:
    """With probability one half, a random window of `audio` between `shortest` samples and its full length."""
    if audio.size <= shortest or rng.uniform() < 0.5:
        return audio
    size = int(rng.integers(shortest, audio.size + 1))
    first = int(rng.integers(0, audio.size - size + 1))
    return audio[first : first + size]


@torch.no_grad()
def evaluate(
    backbone: Backbone, adapter: Adapter, examples: Sequence[Example], index: dict[str, int], batch_seconds: float
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over `examples`."""
    correct, loss, rng = 0, 0.0, np.random.default_rng(0)
    for batch in make_batches([e.audio.size for e in examples], int(batch_seconds * SAMPLE_RATE), rng):
        waveforms, lengths, targets = _batch([examples[i] for i in batch], index)
        logits = classifier_logits(backbone, adapter, waveforms, lengths)
        correct += int((logits.argmax(dim=1) == targets).sum())
        loss += float(F.cross_entropy(logits, targets, reduction="sum"))
    return correct / len(examples), loss / len(examples)


def train_classifier(
    backbone_dir: Path,
    train: Sequence[Example],
    valid: Sequence[Example],
    spec: ClassifierSpec,
    out: Path,
    config: TrainConfig,
    init: Path | None = None,
    speed_perturb: float = 0.0,
    crop_seconds: float = 0.0,
) -> ClassifierResult:
    """Train on `train` (label in `Example.text`), keep the best by validation accuracy (then loss), write `out`.
    `init`: continue from this classifier file (same labels; its bottlenecks and CNN adapters, not the spec's).
    `speed_perturb`: training utterances at random speeds within ±this; `crop_seconds`: half of them cut to random
    windows at least this long (see `_batch`); validation never."""
    torch.manual_seed(config.seed)
    engine = Engine.from_pretrained(backbone_dir, device="cpu", dtype="float32").engine
    labels = sorted({e.text for e in train})
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least 2 labels in the training manifests, found {labels}")
    unknown = sorted({e.text for e in valid} - set(labels))
    if unknown:
        raise ValueError(f"validation labels {unknown[:5]} never occur in the training manifests")
    index = {label: i for i, label in enumerate(labels)}
    if init is not None:
        adapter = engine.prepare(load_adapter(init))
        if list(adapter.labels) != labels:
            raise ValueError(f"{init} classifies {list(adapter.labels)}, the manifests have {labels}")
        adapter.info = replace(adapter.info, name=spec.name, task=spec.task)
    else:
        adapter = build_classifier(engine, spec, labels, config.seed)
    adapter.requires_grad_(True)
    backbone = engine.backbone
    trainable = sum(p.numel() for p in adapter.parameters())
    backbone_parameters = sum(p.numel() for p in backbone.parameters())
    logger.info(
        "%s: %d labels, %d train / %d valid utterances, %d trainable parameters (%.2f%% of the backbone)",
        spec.name,
        len(labels),
        len(train),
        len(valid),
        trainable,
        100 * trainable / backbone_parameters,
    )
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    best = (-1.0, math.inf)
    step, start = 0, time.monotonic()
    losses: list[float] = []

    def minutes() -> float:
        return (time.monotonic() - start) / 60

    def validate() -> None:
        nonlocal best
        adapter.eval()
        accuracy, loss = evaluate(backbone, adapter, valid, index, config.batch_seconds)
        adapter.train()
        logger.info("step %d train loss %.4f valid accuracy %.4f loss %.4f (%.1f min)", step, np.mean(losses or [0]),
                    accuracy, loss, minutes())  # fmt: skip
        losses.clear()
        if (accuracy, -loss) > (best[0], -best[1]):
            best = (accuracy, loss)
            adapter.info = replace(adapter.info, extra={**adapter.info.extra, "valid_accuracy": f"{accuracy:.4f}"})
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            save_adapter(adapter, tmp)
            tmp.replace(out)

    if init is not None:  # score (and write) the starting weights: continuing never writes worse ones
        validate()
    adapter.train()
    done = False
    while not done:
        for batch in make_batches([e.audio.size for e in train], int(config.batch_seconds * SAMPLE_RATE), rng):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config, minutes())
            waveforms, lengths, targets = _batch([train[i] for i in batch], index, speed_perturb, rng, crop_seconds)
            loss = F.cross_entropy(classifier_logits(backbone, adapter, waveforms, lengths), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(adapter.parameters()), 1.0)
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            out_of_time = config.max_minutes is not None and minutes() > config.max_minutes
            done = step >= config.steps or out_of_time
            if step % config.eval_every == 0 or done:
                validate()
            if done:
                break
    return ClassifierResult(best[0], tuple(labels), trainable, backbone_parameters, step, minutes())


def predict(backbone_dir: Path, adapter_file: Path, examples: Sequence[Example], batch_size: int = 16) -> list[str]:
    """Each utterance's top label through the serving engine and the written file."""
    engine = Engine.from_pretrained(backbone_dir, device="cpu", dtype="float32").engine
    adapter = engine.prepare(load_adapter(adapter_file))
    predictions: list[str] = []
    for first in range(0, len(examples), batch_size):
        chunk = examples[first : first + batch_size]
        logits = engine.forward(
            *pad_batch([e.audio.astype(np.float32) / 32768.0 for e in chunk]), [adapter] * len(chunk)
        )
        predictions += [adapter.labels[int(row.argmax())] for row in logits]
    return predictions


def accuracy(backbone_dir: Path, adapter_file: Path, examples: Sequence[Example]) -> float:
    """Share of `examples` whose top label through the serving engine is their own."""
    predictions = predict(backbone_dir, adapter_file, examples)
    return sum(p == e.text for p, e in zip(predictions, examples, strict=True)) / len(examples)
