"""benchmarks/peer_profile.py: operations sorted into kinds and parts alike for every runtime, end to end on a tiny
model (the peers' columns only where OpenVINO / ONNX Runtime are installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.peer_profile import CATEGORIES, FRONT_END, category, part_of

ROOT = Path(__file__).resolve().parents[2]


def test_operations_of_each_runtime_fall_into_the_same_kinds():
    assert category("aten::addmm") == category("MatMul") == category("FullyConnected") == "matrix products"
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert category("MatMul", "/wav2vec2/encoder/layers.3/attention/MatMul_1") == "attention"  # Q·Kᵀ, weights·V
    assert category("MatMul", "/wav2vec2/encoder/layers.3/attention/q_proj/MatMul") == "matrix products"
    assert category("Subgraph", "/wav2vec2/encoder/layers.3/attention/MatMul_1") == "attention"
    assert category("aten::mkldnn_convolution") == category("GroupConvolution") == "convolution"
    assert category("aten::gelu") == category("BiasGelu") == "GELU"
    assert category("SomethingNew") == "other"
    assert part_of("Conv", "/wav2vec2/feature_extractor/conv_layers.0/conv/Conv") == FRONT_END
    assert part_of("MatMul", "/wav2vec2/feature_projection/projection/MatMul") == FRONT_END
    assert part_of("Gelu", "Gelu_token_12") == FRONT_END  # fused, scope lost: the bias-free front-end GELU
    assert part_of("BiasGelu", "BiasGelu_token_3") == "transformer"


def test_quick_run_profiles_chorus_front_end_and_transformer(tmp_path):
    out = tmp_path / "peer_profile.json"
    command = [sys.executable, "-m", "benchmarks.peer_profile", "--quick", "--models", str(tmp_path), "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    chorus = report["profiles"]["chorus"]
    assert set(chorus) == {FRONT_END, "transformer"} and all(set(part) == set(CATEGORIES) for part in chorus.values())
    assert chorus[FRONT_END]["matrix products"] > 0  # the front end's convs, marked by the hooks
    assert chorus["transformer"]["matrix products"] > 0 and chorus["transformer"]["attention"] > 0
    assert report["forward_ms"]["chorus"] > 0
    for peer in set(report["profiles"]) - {"chorus"}:
        assert sum(report["profiles"][peer][FRONT_END].values()) > 0, peer
