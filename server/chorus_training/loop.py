"""The CTC training loop shared by backbone and adapter training: length-bucketed batches, AdamW with warm-up and
linear decay, gradient clipping, periodic validation (greedy CER), best-checkpoint export, and resume.

A run keeps one state file (`state.pt`: step, trainable weights, optimizer, best CER) that it rewrites every
`checkpoint_minutes` and at the end; starting the same run again resumes from it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import ctc_greedy_decode
from chorus_training.manifest import Example, encode, error_rate
from chorus_training.model import CTCModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    lr: float = 1e-3
    warmup_steps: int = 200
    decay_fraction: float = 0.4  # linear decay to 5% of `lr` over this last share of the steps
    weight_decay: float = 0.01
    batch_seconds: float = 60.0  # audio per batch (padded)
    eval_every: int = 250
    eval_limit: int = 200  # validation utterances per evaluation
    checkpoint_minutes: float = 5.0
    max_minutes: float | None = None  # stop early (still exporting the best weights) after this much time
    seed: int = 0


def make_batches(lengths: Sequence[int], max_samples: int, rng: np.random.Generator) -> list[list[int]]:
    """Indices sorted by length, cut into batches whose padded size (count x longest) stays <= max_samples,
    returned in random order."""
    order = np.argsort(np.asarray(lengths) + rng.uniform(0, 1600, len(lengths)))  # jitter: batches vary per epoch
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order.tolist():
        if current and (len(current) + 1) * max(lengths[j] for j in [*current, i]) > max_samples:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], vocab: Vocabulary) -> tuple[torch.Tensor, ...]:
    """-> waveforms (B, L) float32, lengths (B,), targets (sum S,), target lengths (B,)."""
    lengths = torch.tensor([e.audio.size for e in examples])
    waveforms = torch.zeros(len(examples), int(lengths.max()))
    for row, e in enumerate(examples):
        waveforms[row, : e.audio.size] = torch.from_numpy(e.audio.astype(np.float32) / 32768.0)
    ids = [encode(e.text, vocab) for e in examples]
    targets = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
    return waveforms, lengths, targets, torch.tensor([len(seq) for seq in ids])


def learning_rate(step: int, config: TrainConfig, minutes: float = 0.0) -> float:
    """Warm-up, constant, then linear decay to 5%. Progress is the larger of the step and time budgets used, so a
    run cut short by `max_minutes` still ends with its decay phase."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = step / config.steps
    if config.max_minutes:
        progress = max(progress, minutes / config.max_minutes)
    decay = min(1.0, max(0.0, progress - (1 - config.decay_fraction)) / config.decay_fraction)
    return config.lr * (1 - 0.95 * decay)


@torch.no_grad()
def evaluate(model: CTCModel, examples: Sequence[Example], vocab: Vocabulary, batch_seconds: float = 60.0) -> float:
    """Greedy-decoding CER over `examples`."""
    model.eval()
    hypotheses: dict[int, str] = {}
    rng = np.random.default_rng(0)
    for batch in make_batches([e.audio.size for e in examples], int(batch_seconds * 16_000), rng):
        waveforms, lengths, _, _ = collate([examples[i] for i in batch], vocab)
        logits, frames = model(waveforms, lengths)
        for row, i in enumerate(batch):
            hypotheses[i] = ctc_greedy_decode(logits[row, : int(frames[row])], vocab).text
    model.train()
    return error_rate([e.text for e in examples], [hypotheses[i] for i in range(len(examples))])


def ctc_loss(model: CTCModel, batch: Sequence[Example], vocab: Vocabulary) -> torch.Tensor:
    waveforms, lengths, targets, target_lengths = collate(batch, vocab)
    logits, frames = model(waveforms, lengths)  # (B, T, V)
    log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # (T, B, V)
    return F.ctc_loss(log_probs, targets, frames, target_lengths, blank=vocab.blank_id, zero_infinity=True)


def train_ctc(
    model: CTCModel,
    train: Sequence[Example],
    valid: Sequence[Example],
    vocab: Vocabulary,
    config: TrainConfig,
    run_dir: Path,
    export: Callable[[float], None],
    evaluate_first: bool = False,
) -> float:
    """Train the parameters of `model` that require grad; call `export(cer)` whenever validation CER improves
    (the model then holds the new best weights). Returns the best validation CER. `evaluate_first`: a fresh
    run scores (and exports) its starting weights first, so continued training never exports worse ones."""
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    step, best, spent = _resume(run_dir / "state.pt", model, names, optimizer)
    rng = np.random.default_rng([config.seed, step])
    valid = list(valid[: config.eval_limit])
    if evaluate_first and step == 0:
        best = evaluate(model, valid, vocab)
        logger.info("starting weights: valid CER %.4f", best)
        export(best)
    start = last_save = time.monotonic() - spent * 60

    def minutes() -> float:
        return (time.monotonic() - start) / 60

    losses: list[float] = []
    model.train()
    while step < config.steps:
        for batch in make_batches([e.audio.size for e in train], int(config.batch_seconds * 16_000), rng):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config, minutes())
            loss = ctc_loss(model, [train[i] for i in batch], vocab)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            out_of_time = config.max_minutes is not None and minutes() > config.max_minutes
            if step % config.eval_every == 0 or step == config.steps or out_of_time:
                cer = evaluate(model, valid, vocab)
                logger.info("step %d loss %.3f valid CER %.4f (%.1f min)", step, np.mean(losses), cer, minutes())
                losses = []
                if cer < best:
                    best = cer
                    export(cer)
            elif step % 25 == 0:
                logger.info(
                    "step %d loss %.3f lr %.2e (%.1f min)",
                    step,
                    np.mean(losses[-25:]),
                    learning_rate(step, config, minutes()),
                    minutes(),
                )
            if time.monotonic() - last_save > config.checkpoint_minutes * 60 or step == config.steps or out_of_time:
                _save(run_dir / "state.pt", model, names, optimizer, step, best, minutes())
                last_save = time.monotonic()
            if step >= config.steps or out_of_time:
                return best
    return best


def _save(
    path: Path,
    model: CTCModel,
    names: list[str],
    optimizer: torch.optim.Optimizer,
    step: int,
    best: float,
    spent: float,
) -> None:
    state = dict(model.named_parameters())
    body = {
        "step": step,
        "best": best,
        "minutes": spent,
        "weights": {n: state[n].detach() for n in names},
        "optimizer": optimizer.state_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(body, tmp)
    tmp.replace(path)


def _resume(
    path: Path, model: CTCModel, names: list[str], optimizer: torch.optim.Optimizer
) -> tuple[int, float, float]:
    """-> (step, best CER, minutes spent) of a saved run, or a fresh start."""
    if not path.is_file():
        return 0, math.inf, 0.0
    body = torch.load(path, map_location="cpu", weights_only=True)
    if sorted(body["weights"]) != sorted(names):
        raise ValueError(f"{path} holds a different set of trainable weights; use a new run directory")
    state = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in body["weights"].items():
            state[name].copy_(value)
    optimizer.load_state_dict(body["optimizer"])
    logger.info("resumed %s at step %d (best valid CER %.4f)", path, body["step"], body["best"])
    return int(body["step"]), float(body["best"]), float(body.get("minutes", 0.0))
