"""Backbone speed: Chorus vs transformers' Wav2Vec2ForCTC (10 s clips, fp32 and bf16, batch curve) vs the limit.

The batch curve (B = 1, 2, 4, 8) runs in bf16, the CPU default; fp32 runs B = 1 and 8.

Comparison 1 (limit: GEMM throughput at the model's shapes, FLOPs per audio second) and 2 (speed and batch
curve) in one process, so the fraction of peak is a ratio within one run. Both systems run the same random
wav2vec2-base directory with its CTC head, timed from the same place: float32 audio on the host (each moves it
to the device inside the timed call); Chorus's time includes its input normalisation.

    python -m benchmarks.backbone_speed [--reps 5] [--device cpu] [--out result.json]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Wav2Vec2ForCTC

from benchmarks.common import clip, device_of, finish, interleaved, median, model_dir, parser
from chorus_server.engine import Engine
from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import ctc_greedy_decode
from chorus_server.engine.engine import resolve_dtype

DTYPES = ("float32", "bfloat16")
GEMM_REPEATS = 20  # per round, so the peak's sample spans a similar stretch of time as a model run


def best_gemm(dtype: torch.dtype, device: torch.device, shapes: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The model GEMM shape this machine runs fastest (a quick look; it is then timed beside the models)."""
    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        rates[(m, k, n)] = 2 * m * k * n / min(interleaved({"mm": lambda a=a, b=b: a @ b}, 3, device)["mm"])
    return max(rates, key=rates.__getitem__)


def model_flops(model: Wav2Vec2ForCTC, x: torch.Tensor) -> float:
    """FLOPs of one forward by torch's counter, plus attention's 4·T²·H per layer where SDPA goes uncounted."""
    with (
        torch.no_grad(),
        FlopCounterMode(display=False) as counter,
    ):  # (weight-norm parametrisation fails under inference_mode here)
        out = model(x)
    flops = float(counter.get_total_flops())
    if not any("scaled_dot_product" in str(op) for op in counter.get_flop_counts()["Global"]):
        cfg, frames = model.config, out.logits.shape[1]
        flops += 4 * x.shape[0] * frames**2 * cfg.hidden_size * cfg.num_hidden_layers
    return flops


def hf_forward(model: Wav2Vec2ForCTC, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> None:
    """transformers timed from where Chorus is timed: float32 audio on the host, moved and cast inside the call."""
    with torch.inference_mode():
        model(x.to(device, dtype))


def cer(ref: str, hyp: str) -> float:
    """Character error rate (Levenshtein distance / reference length)."""
    row = list(range(len(hyp) + 1))
    for i, rc in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, hc in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rc != hc))
    return row[-1] / max(1, len(ref))


def measure(
    path: Path, name: str, device: torch.device, seconds: float, batches: tuple[int, ...], reps: int
) -> tuple[float, list[dict], list[torch.Tensor], Vocabulary]:
    """One dtype: both systems at every batch size and the best model-shaped GEMM, all interleaved."""
    dtype = resolve_dtype(name)
    loaded = Engine.from_pretrained(path, device=str(device), dtype=name)
    engine, head = loaded.engine, loaded.default_adapter
    assert head is not None
    hf = Wav2Vec2ForCTC.from_pretrained(path, dtype=dtype).to(device).eval()
    frames = int(engine.frame_lengths(torch.tensor([int(seconds * 16000)]))[0])
    hidden, inner, conv = engine.config.hidden_size, engine.config.intermediate_size, engine.config.conv_dim[-1]
    shapes = [(b * frames, k, n) for b in (1, max(batches)) for k, n in ((hidden, inner), (inner, hidden))]
    m, k, n = best_gemm(dtype, device, [*shapes, (16 * frames, 2 * conv, conv)])
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    systems: dict[str, Callable[[], object]] = {"gemm": lambda: [a @ b for _ in range(GEMM_REPEATS)]}
    for batch in batches:
        x = clip(seconds, batch, seed=batch)
        lengths = torch.full((batch,), x.shape[1])
        systems[f"chorus {batch}"] = lambda x=x, n=lengths, bs=batch: engine.forward(x, n, [head] * bs)
        systems[f"transformers {batch}"] = lambda x=x: hf_forward(hf, x, device, dtype)
    times = interleaved(systems, reps, device)
    peak = 2 * m * k * n * GEMM_REPEATS / median(times.pop("gemm")) / 1e9
    runs = []
    for key, values in times.items():
        system, batch = key.split()
        t = median(values)
        runs.append(
            {"system": system, "dtype": name, "batch": int(batch), "seconds": t, "xrt": int(batch) * seconds / t}
        )
        print(f"{key} {name}: {int(batch) * seconds / t:.1f}x real time", file=sys.stderr, flush=True)
    logits = engine.forward(clip(seconds, 4, seed=9), torch.full((4,), int(seconds * 16000)), [head] * 4)
    return peak, runs, logits, head.vocab


def main() -> None:
    args = parser(__doc__).parse_args()
    device = device_of(args)
    path = model_dir(args.models, "tiny" if args.quick else "base")
    seconds, batches, reps = (1.0, (1, 2), 1) if args.quick else (10.0, (1, 2, 4, 8), args.reps)
    flops = model_flops(Wav2Vec2ForCTC.from_pretrained(path).eval(), clip(seconds)) / seconds
    runs: list[dict] = []
    peaks: dict[str, float] = {}
    logits: dict[str, list[torch.Tensor]] = {}
    for name in DTYPES:
        curve = batches if name == "bfloat16" else (batches[0], batches[-1])  # the full curve in bf16
        peaks[name], engine_runs, logits[name], vocab = measure(path, name, device, seconds, curve, reps)
        runs += engine_runs
    texts = {n: [ctc_greedy_decode(lg, vocab).text for lg in logits[n]] for n in DTYPES}
    agree = [float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(*logits.values(), strict=True)]
    finish(
        "backbone_speed",
        args,
        {
            "clip_seconds": seconds,
            "flops_per_audio_second": flops,
            "gemm_peak_gflops": peaks,
            "runs": runs,
            "bf16_vs_fp32": {
                "argmax_agreement": min(agree),
                "cer": max(cer(a, b) for a, b in zip(texts["float32"], texts["bfloat16"], strict=True)),
            },
        },
    )


if __name__ == "__main__":
    main()
