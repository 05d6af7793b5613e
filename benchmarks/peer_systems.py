"""Factories of the systems `benchmarks.peers` compares, each built in a worker process of its own
(`benchmarks.isolated`). Imports happen inside each factory, so a worker loads only its own runtime.

Every factory takes the audio as a (B, samples) float32 array and returns `(call, info)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Built = tuple[Callable[[], object], dict[str, Any]]


def chorus(path: str, dtype: str, audio: np.ndarray) -> Built:
    import torch

    from chorus_server.engine import Engine

    loaded = Engine.from_pretrained(path, device="cpu", dtype=dtype)
    waveforms, batch = torch.from_numpy(audio), audio.shape[0]
    lengths, adapters = torch.full((batch,), audio.shape[1]), [loaded.default_adapter] * batch
    return (lambda: loaded.engine.forward(waveforms, lengths, adapters)), {}


def transformers(path: str, dtype: str, audio: np.ndarray) -> Built:
    import torch
    from transformers import Wav2Vec2ForCTC

    from benchmarks.backbone_speed import hf_forward

    torch_dtype = getattr(torch, dtype)
    model = Wav2Vec2ForCTC.from_pretrained(path, dtype=torch_dtype).eval()
    waveforms = torch.from_numpy(audio)
    return (lambda: hf_forward(model, waveforms, torch.device("cpu"), torch_dtype)), {}


def ort_session(onnx: str, threads: int, profile_prefix: str | None = None) -> Any:
    """ONNX Runtime on the CPU with every graph optimisation; `profile_prefix`: write its profile there."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def openvino_request(onnx: str, precision: str, threads: int, perf_count: bool = False) -> Any:
    """An OpenVINO infer request on the CPU, latency-tuned; `perf_count`: keep per-node timings."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    return ov.Core().compile_model(onnx, "CPU", {**config, "PERF_COUNT": perf_count}).create_infer_request()


def onnxruntime(onnx: str, threads: int, audio: np.ndarray) -> Built:
    session = ort_session(onnx, threads)
    return (lambda: session.run(None, {"input_values": audio})), {}


def openvino(onnx: str, precision: str, threads: int, audio: np.ndarray) -> Built:
    request = openvino_request(onnx, precision, threads)
    return (lambda: request.infer({0: audio})), {}


def gemm(dtype: str, shapes: list[tuple[int, int, int]], repeats: int) -> Built:
    """The fastest of the model's GEMM shapes on this machine, `repeats` times per call; info: its FLOPs."""
    import torch

    from benchmarks.backbone_speed import best_gemm

    torch_dtype = getattr(torch, dtype)
    m, k, n = best_gemm(torch_dtype, torch.device("cpu"), shapes)
    a, b = torch.randn(m, k, dtype=torch_dtype), torch.randn(k, n, dtype=torch_dtype)
    return (lambda: [a @ b for _ in range(repeats)]), {"flops": 2 * m * k * n * repeats, "shape": [m, k, n]}
