"""Runtimes side by side: Chorus vs transformers vs OpenVINO vs ONNX Runtime, and each against the GEMM limit.

Every system runs the same random model (`base`: post-LN with GroupNorm front end; `base-mms`: pre-LN with
LayerNorm front end) on the same 10 s clips, B = 1 and B = 4, each system in a process of its own, called
round-robin with 0.5 s of quiet before each call (benchmarks/isolated.py: runtimes called back to back in one
process slowed each other by up to 40%), so the ratios are measured side by side. OpenVINO and ONNX Runtime run
the ONNX export of transformers' `Wav2Vec2ForCTC` (`torch.onnx.export`, opset 17, dynamic batch and length), as
a user of those runtimes would; OpenVINO's bf16 is its `INFERENCE_PRECISION_HINT=bf16`. bf16 systems run only where
the CPU has native bf16 (there Chorus's default is bf16 too); elsewhere bf16 is emulated, slow, and not what anyone
would deploy. Each system's speed is also given as a fraction of the measured GEMM rate of its precision: model
FLOPs per audio second × real-time factor / GEMM FLOP/s.

    python -m benchmarks.peers [--reps 3] [--out result.json] [--variants base,base-mms]
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from transformers import Wav2Vec2ForCTC

from benchmarks import peer_systems
from benchmarks.backbone_speed import model_flops
from benchmarks.common import clip, finish, median, model_dir, parser
from benchmarks.isolated import System, interleaved_isolated
from chorus_server.runtime import choose_dtype

THREADS = torch.get_num_threads()
BF16 = choose_dtype("auto", torch.device("cpu")) == "bfloat16"  # native bf16 (else bf16 is emulated and slow)
GEMM_REPEATS = 20
SETTLE_SECONDS = 0.5  # quiet before each call: the previous system's thread pool may still be spinning


def onnx_export(hf: Wav2Vec2ForCTC, out: Path) -> Path:
    """transformers' model as ONNX (once per model directory)."""
    if not out.is_file():
        torch.onnx.export(
            hf,
            (clip(2.0),),
            str(out),
            dynamo=False,
            opset_version=17,
            input_names=["input_values"],
            output_names=["logits"],
            dynamic_axes={"input_values": {0: "batch", 1: "samples"}, "logits": {0: "batch", 1: "frames"}},
        )
    return out


def measure_variant(path: Path, seconds: float, batches: tuple[int, ...], reps: int) -> dict:
    hf32 = Wav2Vec2ForCTC.from_pretrained(path).eval()
    flops = model_flops(hf32, clip(seconds)) / seconds
    dtypes = ("float32", "bfloat16") if BF16 else ("float32",)
    config = hf32.config
    frames = int(hf32.wav2vec2._get_feat_extract_output_lengths(torch.tensor(int(seconds * 16000))))
    shapes = [
        (b * frames, k, n)
        for b in (1, 4)
        for k, n in ((config.hidden_size, config.intermediate_size), (config.intermediate_size, config.hidden_size))
    ]
    systems = {f"gemm {name} 0": System(peer_systems.gemm, (name, shapes, GEMM_REPEATS)) for name in dtypes}
    onnx = None
    if importlib.util.find_spec("openvino") or importlib.util.find_spec("onnxruntime"):  # else: no peer to run
        onnx = str(onnx_export(hf32, path / "model.onnx"))
    for batch in batches:
        audio = clip(seconds, batch, seed=batch).numpy()
        for name in dtypes:
            systems[f"chorus {name} {batch}"] = System(peer_systems.chorus, (str(path), name, audio))
            systems[f"transformers {name} {batch}"] = System(peer_systems.transformers, (str(path), name, audio))
        if onnx and importlib.util.find_spec("openvino"):
            for precision in ("f32", "bf16") if BF16 else ("f32",):
                name = "float32" if precision == "f32" else "bfloat16"
                systems[f"openvino {name} {batch}"] = System(peer_systems.openvino, (onnx, precision, THREADS, audio))
        if onnx and importlib.util.find_spec("onnxruntime"):
            systems[f"onnxruntime float32 {batch}"] = System(peer_systems.onnxruntime, (onnx, THREADS, audio))
    times, info = interleaved_isolated(systems, reps, settle=SETTLE_SECONDS)
    gflops = {name: info[f"gemm {name} 0"]["flops"] / median(times.pop(f"gemm {name} 0")) / 1e9 for name in dtypes}
    # Per round, Chorus against the fastest peer of that round: the machine's speed drifts by tens of percent
    # within minutes, and a round's systems run back to back, so the median of per-round ratios is the steadier.
    vs_fastest: dict[str, float] = {}
    for key, values in times.items():
        system, setting = key.split(maxsplit=1)  # setting: "<dtype> <batch>"
        peers = [times[f"{peer} {setting}"] for peer in ("openvino", "onnxruntime") if f"{peer} {setting}" in times]
        if system == "chorus" and peers:
            vs_fastest[setting] = median([min(p[i] for p in peers) / t for i, t in enumerate(values)])
    runs = []
    for key, values in times.items():
        system, dtype, batch = key.split()
        xrt = int(batch) * seconds / median(values)
        runs.append(
            {
                "system": system,
                "dtype": dtype,
                "batch": int(batch),
                "xrt": xrt,
                "gemm_fraction": xrt * flops / 1e9 / gflops[dtype],
            }
        )
        print(f"{path.name} {key}: {xrt:.1f}x real time", file=sys.stderr, flush=True)
    return {"flops_per_audio_second": flops, "gemm_gflops": gflops, "runs": runs, "vs_fastest_peer": vs_fastest}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--variants", default="base,base-mms")
    args = p.parse_args()
    seconds, batches, reps = (1.0, (1,), 1) if args.quick else (10.0, (1, 4), args.reps)
    variants = ["tiny", "tiny-mms"] if args.quick else args.variants.split(",")
    results = {v: measure_variant(model_dir(args.models, v), seconds, batches, reps) for v in variants}
    finish(
        "peers",
        args,
        {
            "clip_seconds": seconds,
            "threads": THREADS,
            "default_dtype": choose_dtype("auto", torch.device("cpu")),
            "cpu_has_bf16": BF16,
            "variants": results,
        },
    )


if __name__ == "__main__":
    main()
