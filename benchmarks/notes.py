"""The prose of `docs/benchmarks.md`: method, the ratios paragraph, and why a missed target is missed."""

from __future__ import annotations

from typing import Any

METHOD = """## How to run, and how to read the numbers

`make bench` (= `python -m benchmarks`) runs every comparison below, each in its own process, prints the summary
and rewrites this file and `benchmarks.png`. `python -m benchmarks.<name> --help` runs one; `--device cuda`
measures a GPU with the same code; `--quick` checks the harness on tiny models in seconds (CI runs that).

Numbers below: {device}, a CPU **shared with other work** while measuring, so absolute times drift by tens of
percent between runs. Every comparison therefore times the systems it compares *side by side* in one process,
round-robin, and reports medians; read the ratios, not the absolute values. Benchmarks are never timed tests."""

ENGINE_CHANGES = """## What changed in the engine for these numbers

- **Conv front end, channels-last and per item** (`server/engine/frontend.py`). Each item runs alone over its
  own valid samples as `(T, C)` matrices; every strided conv is a sum of plain GEMMs over strided *views*
  (taps `j..j+s-1` of a stride-`s` conv are one contiguous `(n, s·C)` row block: no unfold copy, no layout
  reorders, no transposes). Padding never enters the front end, so work scales with real audio, and one
  item's activations stay as small as they can (the batched `(B, 512, 32000)` tensor is what made batching lose
  throughput on CPU).
- **GroupNorm folded into conv layer 0** (base models): a channel's output is `w_c·x_t`, so its mean over time
  is `w_c·μ` and its variance `w_cΣw_cᵀ`, with `μ`, `Σ` the mean and covariance of the item's 10-sample windows
  (float64). Layer 0 becomes one GEMM with a per-item bias; the norm never touches the model's largest
  activation. Parity with transformers stays within 1e-4 (tests unchanged).
- **Adapters as stacked tensors** (`server/engine/adapters.py`): per (site, part) one `(layers, …)` tensor, e.g.
  `attn_down_weight: (L, r, H)`, instead of one `nn.Module` per bottleneck (243 for an MMS-size adapter). The
  file format is unchanged; `Adapter.tensors()` gives the per-layer views under the file's names.
- **Cold load** (`server/engine/tensor_file.py`, `adapter_store/loader.py`): zero-copy safetensors parse (one
  copy in all: into the stacks), a single-threaded NaN/Inf check, sha256 verified on a second thread while the
  adapter builds (the adapter is discarded if it fails), and loader threads that run torch on one intra-op
  thread so a load never waits at a parallel-region barrier behind the inference thread."""


def how_we_compare(results: dict[str, Any]) -> str:
    parts = []
    if r := results.get("backbone_speed"):
        runs = {(x["system"], x["dtype"], x["batch"]): x["xrt"] for x in r["runs"]}
        bf16, fp32 = runs[("chorus", "bfloat16", 1)], runs[("chorus", "float32", 1)]
        frac = bf16 * r["flops_per_audio_second"] / 1e9 / r["gemm_peak_gflops"]["bfloat16"]
        parts.append(
            f"On a 10 s clip Chorus runs **{bf16 / runs[('transformers', 'bfloat16', 1)]:.2f}×** transformers' speed "
            f"in bf16 and **{fp32 / runs[('transformers', 'float32', 1)]:.2f}×** in fp32 ({bf16:.1f}× and "
            f"{fp32:.1f}× real time; bf16 reaches {frac:.0%} of this machine's bf16 GEMM peak)"
        )
        biggest = max(x["batch"] for x in r["runs"])
        ours = runs[("chorus", "bfloat16", biggest)] / bf16
        theirs = runs[("transformers", "bfloat16", biggest)] / runs[("transformers", "bfloat16", 1)]
        parts.append(
            f"batching {biggest} clips gives {ours:.2f}× the per-audio-second throughput of one "
            f"(transformers: {theirs:.2f}×)"
        )
    if r := results.get("multi_tenant"):
        parts.append(
            f"64 distinct adapters in the traffic keep **{r['ratio_to_one_adapter'].get('64', float('nan')):.2f}×** "
            "of single-adapter throughput"
        )
    if r := results.get("swap"):
        parts.append(
            f"against transformers swapping MMS adapters per request, Chorus serves the same traffic "
            f"**{r['chorus_fp32_vs_transformers']:.1f}×** faster at the same precision (fp32) and "
            f"**{r['chorus_bf16_vs_transformers']:.1f}×** at its CPU default (bf16)"
        )
    if r := results.get("memory"):
        row = r["rows"][-1]
        parts.append(f"{row['tasks']} MMS-size tasks need {row['ratio']:.0f}× less memory than as separate models")
    if r := results.get("adapter_cold_load"):
        parts.append(f"an MMS-size adapter loads cold in {r['p50_ms']:.0f} ms (p50; {r['cpu_p50_ms']:.0f} ms of CPU)")
    if r := results.get("server_load"):
        parts.append(f"HTTP adds {r['overhead']:+.0%} at one client")
    if not parts:
        return "## How we compare\n\nNo results yet: run `make bench`."
    return "## How we compare\n\n" + "; ".join(parts) + "."


MISSES = {
    "bf16": "**bf16 speed (26× real time, 90% of GEMM peak).** The forward is GEMM-bound except for attention: "
    "PyTorch's CPU flash-attention kernel runs these shapes (T≈500, 12 heads of 64) at a fraction of GEMM "
    "throughput, and element-wise work (GELU, LayerNorm, residual adds, bf16 rounding) is memory-bound. On a "
    "2-core machine shared with other jobs a single GEMM reaches its peak only in short bursts, so the whole "
    "model cannot sit at 90% of it; the gap to 26× is attention plus element-wise time.",
    "cold": "**Cold load ≤ 10 ms.** The CPU work per load is what this change cut (module tree → 13 stacked "
    "tensors, one copy, no pickle-like parse); the wall-clock p50 on a loaded 2-core machine adds waiting for a "
    "core. The remaining CPU time is the file read, sha256 over 8.9 MB (run beside the build) and the stacking copy.",
    "dip": "**No throughput dip during cold loads.** On 2 cores a load's CPU time (read, hash, stack) is taken from "
    "the inference thread's cores; loader threads are single-threaded to bound it to one core, never both.",
    "tenant": "**≥ 0.95× at 64 adapters.** Each distinct adapter in a batch is its own segment with its own small "
    "matmuls per layer and site; at B=8 almost every item is its own segment.",
    "batch": "**Batching never loses throughput.** The per-item front end removes the cache blow-up; what is left "
    "is attention and element-wise work that grows with batch size on a cache-bound CPU.",
    "server": "**HTTP overhead ≤ 5% at c=1.** Upload parsing, WAV decoding and the event-loop hand-off are "
    "fixed costs per request; on 2 shared cores they also compete with inference for CPU.",
    "swap": "**Chorus vs swap-per-request.** With 2 cores there is little batching headroom: the backbone is the "
    "bulk of the work for both systems, and the swap itself costs transformers only a few ms per request.",
    "fp32": "**Chorus fp32 ≥ transformers fp32.** Same GEMMs in both; the remaining difference is noise-level.",
}


def misses(results: dict[str, Any]) -> str:
    """Explanations for the targets this run missed (from the summary verdicts)."""
    from benchmarks.report import summary

    missed = [row[0] for row in summary(results) if row[3] == "**missed**"]
    keys = []
    for measure in missed:
        key = (
            "bf16"
            if "bf16 speed" in measure or "bf16 fraction" in measure
            else "cold"
            if "cold load" in measure
            else "dip"
            if "cold loads" in measure
            else "tenant"
            if "distinct adapters" in measure
            else "batch"
            if "per audio second" in measure
            else "server"
            if "HTTP" in measure
            else "swap"
            if "swap" in measure
            else "fp32"
        )
        if key not in keys:
            keys.append(key)
    if not keys:
        return "None in this run."
    return "\n\n".join(MISSES[k] for k in keys)
