"""The prose of `docs/benchmarks.md`: method, the ratios paragraph, and why a missed target is missed."""

from __future__ import annotations

from typing import Any

METHOD = """## How to run, and how to read the numbers

`make bench` (= `python -m benchmarks`) runs every comparison below, each in its own process, prints the summary
and rewrites this file and `benchmarks.png`. `python -m benchmarks.<name> --help` runs one; `--device cuda`
measures a GPU with the same code; `--quick` checks the harness on tiny models in seconds (CI runs that).

Numbers below: {device}. The backbone-speed and precision comparisons were last run on an otherwise idle
machine; the others while the CPU was **shared with other work** (load 4–7 on 2 cores), so absolute times drift
by tens of percent between runs. Every comparison therefore times the systems it compares *side by side* in one process,
round-robin, on one dedicated thread (as the server's inference thread), and reports medians; read the ratios,
not the absolute values. Benchmarks are never timed tests."""

MULTI_TENANT = """With B=8, 8 or more distinct adapters make almost every item its own segment, so 8, 64 and 512
exercise the same code path; their differences are the machine's noise. The first full run of this suite, before
same-shaped bottlenecks were batched (one small op per segment and site), measured 0.67×, 0.43× and 0.79×."""

SERVER_PATH = """The overhead is the median, over back-to-back pairs, of an HTTP request's time over an
in-process `engine.transcribe` of the same clip, run on a thread of its own as the server's inference thread
is; "inside the server" is the server's own measure (request time beyond the forward passes, from its metrics).
Run on the main thread instead, the direct call was about 2× slower on this busy machine (its OpenMP team), which
is why every benchmark here times inference on a dedicated thread."""

PEERS = """OpenVINO and ONNX Runtime run the ONNX export of transformers' `Wav2Vec2ForCTC` (opset 17,
dynamic batch and length), all systems on the same random weights, round-robin on one inference thread
(`benchmarks/peers.py`). bf16 rows appear only on CPUs with native bf16 (AVX-512 BF16 or AMX)."""

ENGINE_CHANGES = """## What changed in the engine for these numbers

- **Conv front end, channels-last and per item** (`chorus_server/engine/frontend.py`). Each item runs alone over its
  own valid samples as `(T, C)` matrices; every strided conv is a sum of plain GEMMs over strided *views*
  (taps `j..j+s-1` of a stride-`s` conv are one contiguous `(n, s·C)` row block: no unfold copy, no layout
  reorders, no transposes). Padding never enters the front end, so work scales with real audio, and one
  item's activations stay as small as they can (the batched `(B, 512, 32000)` tensor is what made batching lose
  throughput on CPU).
- **GroupNorm folded into conv layer 0** (base models): a channel's output is `w_c·x_t`, so its mean over time
  is `w_c·μ` and its variance `w_cΣw_cᵀ`, with `μ`, `Σ` the mean and covariance of the item's 10-sample windows
  (float64). Layer 0 becomes one GEMM with a per-item bias; the norm never touches the model's largest
  activation. Parity with transformers stays within 1e-4 (tests unchanged).
- **Adapters as stacked tensors** (`chorus_server/engine/adapters.py`): per (site, part) one `(layers, …)` tensor, e.g.
  `attn_down_weight: (L, r, H)`, instead of one `nn.Module` per bottleneck (243 for an MMS-size adapter). The
  file format is unchanged; `Adapter.tensors()` gives the per-layer views under the file's names.
- **Mixed-adapter batches**: segments whose bottlenecks share a shape run as batched matmuls over per-item
  weights (`gathered` in `adapters.py`): a fixed handful of ops per site, whatever the number of distinct
  adapters; other mixes keep the per-segment path.
- **Cold load** (`chorus_server/engine/tensor_file.py`, `chorus_store/loader.py`): zero-copy safetensors parse (a
  float32 file written by Chorus needs no copy at all: each stack is a view of the read buffer), xxh3-128
  verified on a second thread while the adapter builds (the adapter is discarded if it fails; sha256 and the
  NaN/Inf scan run once, at publish), placeholders built on the meta device, and loader threads that leave
  torch's process-wide thread count alone."""


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
    if (r := results.get("precision")) and "skipped" not in r:
        parts.append(
            f"on the demo model bf16 transcripts differ from fp32 by {r['cer_bf16_vs_fp32'] * 100:.1f} CER points "
            f"({r['identical']}/{r['samples']} identical)"
        )
    if r := results.get("multi_tenant"):
        parts.append(
            f"64 distinct adapters in the traffic keep **{r['ratio_to_one_adapter'].get('64', float('nan')):.2f}×** "
            "of single-adapter throughput"
        )
    if r := results.get("swap"):
        parts.append(
            f"against transformers swapping MMS adapters per request (same number of clients, median over 1, 4 "
            f"and 16), Chorus serves the same traffic "
            f"**{r['chorus_fp32_vs_transformers']:.1f}×** faster at the same precision (fp32) and "
            f"**{r['chorus_bf16_vs_transformers']:.1f}×** at its CPU default (bf16)"
        )
    if r := results.get("memory"):
        row = r["rows"][-1]
        parts.append(f"{row['tasks']} MMS-size tasks need {row['ratio']:.0f}× less memory than as separate models")
    if r := results.get("adapter_cold_load"):
        full = f"{r['evicting_p50_ms']:.0f} ms with the cache full, " if "evicting_p50_ms" in r else ""
        parts.append(f"an MMS-size adapter loads cold in {full}{r['p50_ms']:.0f} ms while the cache fills (p50)")
    if r := results.get("server_load"):
        inside = f"{r['server_side_overhead']:+.1%} measured inside the server"
        if r["overhead"] < 0:  # an end-to-end median below the direct call is noise, not a speed-up
            parts.append(f"serving over HTTP timed no slower than a direct call at one client ({inside})")
        else:
            parts.append(f"serving over HTTP adds {r['overhead']:.1%} to a direct call at one client ({inside})")
    if not parts:
        return "## How we compare\n\nNo results yet: run `make bench`."
    return "## How we compare\n\n" + "; ".join(parts) + "."


MISSES = {
    "bf16": "**bf16 speed (26× real time, 90% of the bf16 GEMM peak) — missed.** Chorus and transformers run the "
    "same transformer GEMMs and stay within a few percent of each other; neither gets near the peak at B=1. What "
    "keeps the forward below a lone GEMM: PyTorch's CPU flash-attention kernel runs T≈500, 12×64 heads at a "
    "fraction of GEMM throughput; GELU, LayerNorm, residual adds and bf16 rounding are memory-bound; and on a CPU "
    "shared with other jobs every one of the forward's ~400 parallel regions waits until both cores are free, "
    "which a single long GEMM (the peak measurement) does not; batching does not change the fraction on this CPU "
    "(see the B=8 row). int8 and `torch.compile` were ruled out in the issue (accuracy, compile "
    "time); fp16 matmul is unusable on this CPU.",
    "precision": "**bf16 transcripts within 0.5 CER points of fp32.** bf16 keeps 8 bits of mantissa; on a small "
    "model whose greedy choices are close calls, a few characters flip. Accumulation is already fp32 inside the "
    "GEMMs and the front end's GroupNorm statistics are computed in float64.",
    "fp32": "**Chorus ≥ transformers (B=1).** Both run the same GEMMs; where Chorus is a few percent behind in a "
    "run it is inside the run-to-run spread of this shared machine (compare the B=8 rows and the bf16 rows). The "
    "front end itself is cheaper (GEMMs over views, no GroupNorm pass, no padding), which the per-item batch curve "
    "shows; at B=1 with one item there is nothing to save on padding.",
    "cold": "**Cold load ≤ 10 ms.** With the cache full (each load evicts one adapter, the steady state of a "
    "working set larger than the cache) an MMS-size adapter loads in about 9 ms: read 1.7 ms, parse and checks "
    "≈ 4 ms, the xxh3 check (0.5 ms) beside them, prepare 0.5–1 ms; the NaN/Inf scan ran at publish and is not "
    "repeated. While the cache fills, every load also faults in 9 MB of memory the process never had (5–6 ms on "
    "this VM), which keeps that phase above 10 ms.",
    "dip": "**No throughput dip during cold loads.** The dip must be read against the noise column: on 2 shared "
    "cores the quiet batches themselves scatter by several percent. A load is single-threaded work on a loader "
    "thread (Python parsing, numpy copies, the checksum thread), so it takes at most one core's time slices and "
    "never joins a parallel region of the inference thread.",
    "tenant": "**≥ 0.95× at 64 adapters.** With one small op per segment per site, a batch of 8 distinct adapters "
    "ran ~5× more ops than a single-adapter batch, and on a busy CPU each op waits for both cores (an earlier run "
    "of this suite measured 0.43× at 64 adapters that way). Same-shaped bottlenecks now run as batched matmuls "
    "over per-item weights, a fixed handful of ops per site; adapters of different shapes in one batch still fall "
    "back to per-segment ops.",
    "batch": "**Batching never loses throughput.** The per-item front end removes the cache blow-up; what is left "
    "is attention and element-wise work that grows with batch size on a cache-bound CPU.",
    "server": "**HTTP overhead ≤ 5% at c=1.** Upload parsing, WAV decoding and the event-loop hand-off are fixed "
    "costs per request; on 2 shared cores they compete with inference for CPU.",
    "swap": "**Chorus fp32 ≥ 1.3× swap-per-request.** On 2 cores batching has little headroom: the backbone is "
    "the bulk of the work for both systems at the same precision, and the swap itself costs transformers only a "
    "few ms per request (its swap and no-swap rows are within noise of each other here). What Chorus gains at fp32 "
    "is batching several requests per pass, worth about a quarter more throughput on this CPU; the large gain "
    "comes with its default precision (bf16), which transformers' MMS path does not use.",
}


# Summary measure (substring, first match wins) -> explanation.
MEASURE_KEYS = (
    ("cold loads", "dip"),
    ("cold load", "cold"),
    ("bf16 speed", "bf16"),
    ("bf16 fraction", "bf16"),
    ("distinct adapters", "tenant"),
    ("per audio second", "batch"),
    ("HTTP", "server"),
    ("inside the server", "server"),
    ("swap", "swap"),
    ("transcripts", "precision"),
)


def misses(results: dict[str, Any]) -> str:
    """Explanations for the targets this run missed (from the summary verdicts)."""
    from benchmarks.report import summary

    missed = [row[0] for row in summary(results) if row[3] == "**missed**"]
    keys: list[str] = []
    for measure in missed:
        key = next((k for text, k in MEASURE_KEYS if text in measure), "fp32")
        if key not in keys:
            keys.append(key)
    if not keys:
        return "None in this run."
    return "\n\n".join(MISSES[k] for k in keys)
