"""Runtimes side by side: Chorus vs transformers vs OpenVINO vs ONNX Runtime, and each against the GEMM limit.

Every system runs the same random model (`base`: post-LN with GroupNorm front end; `base-mms`: pre-LN with
LayerNorm front end) on the same 10 s clips, B = 1 and B = 4, round-robin on one inference thread, in one
process, so the ratios are measured side by side. OpenVINO and ONNX Runtime run the ONNX export of transformers'
`Wav2Vec2ForCTC` (`torch.onnx.export`, opset 17, dynamic batch and length), as a user of those runtimes would;
OpenVINO's bf16 is its `INFERENCE_PRECISION_HINT=bf16`. bf16 systems run only where the CPU has native bf16 (there
Chorus's default is bf16 too); elsewhere bf16 is emulated, slow, and not what anyone would deploy. Each system's
speed is also given as a fraction of the measured GEMM rate of its precision: model FLOPs per audio second ×
real-time factor / GEMM FLOP/s.

    python -m benchmarks.peers [--reps 3] [--out result.json] [--variants base,base-mms]
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2ForCTC

from benchmarks.backbone_speed import best_gemm, hf_forward, model_flops
from benchmarks.common import clip, finish, interleaved, median, model_dir, parser
from chorus_server.engine import Engine
from chorus_server.runtime import choose_dtype

CPU = torch.device("cpu")
THREADS = torch.get_num_threads()
BF16 = choose_dtype("auto", torch.device("cpu")) == "bfloat16"  # native bf16 (else bf16 is emulated and slow)
GEMM_REPEATS = 20


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


def openvino_system(onnx: Path, precision: str) -> Callable[[np.ndarray], object] | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    compiled = core.compile_model(core.read_model(str(onnx)), "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def ort_system(onnx: Path) -> Callable[[np.ndarray], object] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input_values": x})


def gemm_rate(dtype: torch.dtype, engine: Engine, frames: int) -> tuple[Callable[[], object], int]:
    """The fastest model-shaped GEMM, repeated: (the call to time, its FLOPs)."""
    hidden, inner = engine.config.hidden_size, engine.config.intermediate_size
    shapes = [(b * frames, k, n) for b in (1, 4) for k, n in ((hidden, inner), (inner, hidden))]
    m, k, n = best_gemm(dtype, torch.device("cpu"), shapes)
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return (lambda: [a @ b for _ in range(GEMM_REPEATS)]), 2 * m * k * n * GEMM_REPEATS


def measure_variant(path: Path, seconds: float, batches: tuple[int, ...], reps: int) -> dict:
    hf32 = Wav2Vec2ForCTC.from_pretrained(path).eval()
    flops = model_flops(hf32, clip(seconds)) / seconds
    dtypes = ("float32", "bfloat16") if BF16 else ("float32",)
    hf16 = Wav2Vec2ForCTC.from_pretrained(path, dtype=torch.bfloat16).eval() if BF16 else None
    engines = {name: Engine.from_pretrained(path, device="cpu", dtype=name) for name in dtypes}
    frames = int(engines["float32"].engine.frame_lengths(torch.tensor([int(seconds * 16000)]))[0])
    systems: dict[str, Callable[[], object]] = {}
    gemms = {name: gemm_rate(loaded.engine.dtype, loaded.engine, frames) for name, loaded in engines.items()}
    for name, (fn, _) in gemms.items():
        systems[f"gemm {name} 0"] = fn
    peers: dict[str, Callable[[np.ndarray], object] | None] = {}
    if importlib.util.find_spec("openvino") or importlib.util.find_spec("onnxruntime"):  # else: no peer to run
        onnx = onnx_export(hf32, path / "model.onnx")
        peers = {"openvino float32": openvino_system(onnx, "f32"), "onnxruntime float32": ort_system(onnx)}
        if BF16:
            peers["openvino bfloat16"] = openvino_system(onnx, "bf16")
    for batch in batches:
        x = clip(seconds, batch, seed=batch)
        lengths, xn = torch.full((batch,), x.shape[1]), x.numpy()
        for name, loaded in engines.items():
            head = loaded.default_adapter
            systems[f"chorus {name} {batch}"] = lambda e=loaded.engine, x=x, n=lengths, a=head, b=batch: e.forward(
                x, n, [a] * b
            )
        systems[f"transformers float32 {batch}"] = lambda x=x: hf_forward(hf32, x, CPU, torch.float32)
        if hf16 is not None:
            systems[f"transformers bfloat16 {batch}"] = lambda x=x, m=hf16: hf_forward(m, x, CPU, torch.bfloat16)
        for key, peer in peers.items():
            if peer is not None:
                systems[f"{key} {batch}"] = lambda p=peer, xn=xn: p(xn)
    times = interleaved(systems, reps, torch.device("cpu"))
    gflops = {name: flops / median(times.pop(f"gemm {name} 0")) / 1e9 for name, (_, flops) in gemms.items()}
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
    return {"flops_per_audio_second": flops, "gemm_gflops": gflops, "runs": runs}


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
