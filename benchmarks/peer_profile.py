"""Where each runtime's time goes: Chorus (torch.profiler), ONNX Runtime (its profiler) and OpenVINO (its
performance counters) on the same random model and clip, by kind of operation, the front end (conv feature
encoder + feature projection) apart from the transformer. It explains the gap `benchmarks.peers` measures.

    python -m benchmarks.peer_profile [--variant base] [--seconds 10] [--reps 3] [--out result.json]

float32, B = 1. Times are milliseconds per forward: each operation's own time on the calling thread (the
intra-op threads work inside it), summed by category and averaged over the profiled forwards. Profilers add
overhead of their own, so the category shares, not the totals, are the result; the unprofiled forward times are
measured beside them, each runtime in a process of its own (`benchmarks.isolated`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2ForCTC

from benchmarks import peer_systems
from benchmarks.backbone_speed import model_flops
from benchmarks.common import clip, finish, median, model_dir, parser
from benchmarks.isolated import System, interleaved_isolated
from benchmarks.peers import SETTLE_SECONDS, THREADS, onnx_export
from chorus_server.engine import Engine

FRONT_END = "front end"
CATEGORIES = (
    "matrix products",
    "attention",
    "convolution",
    "GELU",
    "normalization",
    "elementwise",
    "copies and layout",
    "other",
)
# By operator name (aten:: stripped; ONNX Runtime's op types; OpenVINO's node types).
_KINDS = {
    "matrix products": {
        "addmm",
        "addmm_",
        "mm",
        "bmm",
        "matmul",
        "linear",
        "MatMul",
        "Gemm",
        "FusedMatMul",
        "FullyConnected",
    },
    "attention": {
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "softmax",
        "_softmax",
        "Softmax",
        "Attention",
        "MultiHeadAttention",
        "ScaledDotProductAttention",
    },
    "convolution": {
        "convolution",
        "_convolution",
        "mkldnn_convolution",
        "conv1d",
        "Conv",
        "FusedConv",
        "Convolution",
        "GroupConvolution",
        "_fft_r2c",  # Chorus's positional conv on the CPU is an FFT convolution (engine/spectral_conv.py)
        "_fft_c2r",
    },
    "GELU": {"gelu", "gelu_", "Gelu", "BiasGelu", "FastGelu", "Erf"},
    "normalization": {
        "layer_norm",
        "native_layer_norm",
        "group_norm",
        "native_group_norm",
        "LayerNormalization",
        "SkipLayerNormalization",
        "InstanceNormalization",
        "GroupNorm",
        "MVN",
    },
    "elementwise": {
        "add",
        "add_",
        "mul",
        "div",
        "sub",
        "relu",
        "Add",
        "Mul",
        "Div",
        "Sub",
        "Sqrt",
        "Pow",
        "Eltwise",
        "MulAdd",
    },
    "copies and layout": {
        "copy_",
        "clone",
        "contiguous",
        "cat",
        "pad",
        "constant_pad_nd",
        "unfold",
        "transpose",
        "reshape",
        "view",
        "permute",
        "empty",
        "fill_",
        "zero_",
        "Transpose",
        "Reshape",
        "Concat",
        "Slice",
        "Pad",
        "Gather",
        "Reorder",
    },
}
_CATEGORY = {op: category for category, ops in _KINDS.items() for op in ops}


def category(op: str, node: str = "") -> str:
    """The category of an operator; a runtime's product inside attention (Q·Kᵀ, weights·V; OpenVINO fuses them
    into a `Subgraph`) counts as attention, as it does inside Chorus's fused attention kernel."""
    if re.search(r"attention/(MatMul|Gemm)", node) and op in ("MatMul", "Gemm", "FusedMatMul", "Subgraph"):
        return "attention"
    return _CATEGORY.get(op.removeprefix("aten::"), "other")


def part_of(op: str, node: str) -> str:
    """Front end or transformer, by the ONNX node's scope. Nodes a runtime fused lose their scope: a plain `Gelu`
    (the front end's convs have no bias) counts as front end, anything else unscoped (`BiasGelu`, OpenVINO's `MVN`)
    as transformer."""
    if re.search(r"feature_(extractor|projection)", node) or ("/" not in node and op == "Gelu"):
        return FRONT_END
    return "transformer"


def empty_profile() -> dict[str, dict[str, float]]:
    return {part: dict.fromkeys(CATEGORIES, 0.0) for part in (FRONT_END, "transformer")}


def chorus_profile(engine: Engine, x: torch.Tensor, adapter, reps: int) -> dict[str, dict[str, float]]:
    """ms per forward by category; the front end is marked by hooks on its two modules."""
    marks: list[torch.profiler.record_function] = []

    def enter(*_: object) -> None:
        marks.append(torch.profiler.record_function(FRONT_END))
        marks[-1].__enter__()

    def leave(*_: object) -> None:
        marks.pop().__exit__(None, None, None)

    backbone = engine.backbone
    hooks = [m.register_forward_pre_hook(enter) for m in (backbone.feature_extractor, backbone.feature_projection)]
    hooks += [m.register_forward_hook(leave) for m in (backbone.feature_extractor, backbone.feature_projection)]
    lengths = torch.tensor([x.shape[1]])
    engine.forward(x, lengths, [adapter])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            engine.forward(x, lengths, [adapter])
    for hook in hooks:
        hook.remove()
    out = empty_profile()
    for event in prof.events():
        if event.name == FRONT_END or event.self_cpu_time_total <= 0:
            continue
        parent, part = event.cpu_parent, "transformer"
        while parent is not None:
            if parent.name == FRONT_END:
                part = FRONT_END
                break
            parent = parent.cpu_parent
        out[part][category(event.name)] += event.self_cpu_time_total / 1000 / reps
    return out


def ort_profile(onnx: Path, xn: np.ndarray, reps: int) -> dict[str, dict[str, float]] | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        session = peer_systems.ort_session(str(onnx), THREADS, profile_prefix=str(Path(tmp) / "ort"))
        for _ in range(reps + 1):  # the first run warms up and is left out
            session.run(None, {"input_values": xn})
        events = json.loads(Path(session.end_profiling()).read_text())
    out = empty_profile()
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    first_run_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < first_run_end:
            continue
        node, op = event["name"].removesuffix("_kernel_time"), event.get("args", {}).get("op_name", "")
        out[part_of(op, node)][category(op, node)] += event["dur"] / 1000 / reps
    return out


def openvino_profile(onnx: Path, xn: np.ndarray, reps: int) -> dict[str, dict[str, float]] | None:
    if importlib.util.find_spec("openvino") is None:
        return None
    request = peer_systems.openvino_request(str(onnx), "f32", THREADS, perf_count=True)
    request.infer({0: xn})
    out = empty_profile()
    for _ in range(reps):
        request.infer({0: xn})
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            part = part_of(info.node_type, info.node_name)
            out[part][category(info.node_type, info.node_name)] += info.real_time.total_seconds() * 1000 / reps
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--variant", default="base")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    variant, seconds, reps = ("tiny", 1.0, 1) if args.quick else (args.variant, args.seconds, args.reps)
    path = model_dir(args.models, variant)
    loaded = Engine.from_pretrained(path, device="cpu", dtype="float32")
    hf = Wav2Vec2ForCTC.from_pretrained(path).eval()
    x = clip(seconds)
    xn = x.numpy()
    profiles: dict[str, dict[str, dict[str, float]] | None] = {
        "chorus": chorus_profile(loaded.engine, x, loaded.default_adapter, reps)
    }
    systems = {"chorus": System(peer_systems.chorus, (str(path), "float32", xn))}
    if importlib.util.find_spec("onnxruntime") or importlib.util.find_spec("openvino"):
        onnx = onnx_export(hf, path / "model.onnx")
        profiles["onnxruntime"] = ort_profile(onnx, xn, reps)
        profiles["openvino"] = openvino_profile(onnx, xn, reps)
        if profiles["onnxruntime"] is not None:
            systems["onnxruntime"] = System(peer_systems.onnxruntime, (str(onnx), THREADS, xn))
        if profiles["openvino"] is not None:
            systems["openvino"] = System(peer_systems.openvino, (str(onnx), "f32", THREADS, xn))
    times, _ = interleaved_isolated(systems, reps, settle=SETTLE_SECONDS)
    result = {
        "variant": variant,
        "clip_seconds": seconds,
        "threads": THREADS,
        "gflop_per_forward": model_flops(hf, x) / 1e9,
        "forward_ms": {name: 1000 * median(values) for name, values in times.items()},
        "profiles": {name: profile for name, profile in profiles.items() if profile is not None},
    }
    print_table(result, file=sys.stderr)
    finish("peer_profile", args, result)


def print_table(result: dict, file=sys.stdout) -> None:
    names = list(result["profiles"])
    print(f"| part | category | {' | '.join(names)} |", file=file)
    print(f"|---|---|{'---|' * len(names)}", file=file)
    for part in (FRONT_END, "transformer"):
        for kind in CATEGORIES:
            cells = [result["profiles"][name][part][kind] for name in names]
            if any(c >= 0.5 for c in cells):
                print(f"| {part} | {kind} | {' | '.join(f'{c:.0f}' for c in cells)} |", file=file)
        totals = [sum(result["profiles"][name][part].values()) for name in names]
        print(f"| {part} | **total** | {' | '.join(f'**{c:.0f}**' for c in totals)} |", file=file)
    forward = [result["forward_ms"].get(name, float("nan")) for name in names]
    print(f"| | forward, not profiled | {' | '.join(f'{c:.0f}' for c in forward)} |", file=file)


if __name__ == "__main__":
    main()
