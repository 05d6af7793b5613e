"""Render benchmark results (one JSON per comparison) into a table, `docs/benchmarks.md` and a PNG plot."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from benchmarks import notes

Result = dict[str, Any]


def load_results(folder: Path) -> dict[str, Result]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def speed_rows(r: Result) -> list[tuple[str, str, str, str]]:
    """(measure, value, target, verdict) rows of comparisons 1 and 2."""
    runs = {(x["system"], x["dtype"], x["batch"]): x["xrt"] for x in r["runs"]}
    flops, peaks = r["flops_per_audio_second"], r["gemm_peak_gflops"]
    biggest = max(x["batch"] for x in r["runs"])
    rows = []
    for dtype, short in (("bfloat16", "bf16"), ("float32", "fp32")):
        ours, theirs = runs[("chorus", dtype, 1)], runs[("transformers", dtype, 1)]
        frac = ours * flops / 1e9 / peaks[dtype]
        rows.append((f"Chorus {short}, 10 s clip, B=1", f"{ours:.1f}× real time", "", ""))
        rows.append((f"transformers {short}, B=1", f"{theirs:.1f}× real time", "", ""))
        fp32 = short == "fp32"  # the target is for fp32; bf16 is reported
        ratio = (f"Chorus / transformers {short}, B=1", f"{ours / theirs:.2f}×")
        rows.append((*ratio, "≥ 1" if fp32 else "", verdict(ours >= theirs) if fp32 else ""))
        target = "≥ 90%" if short == "bf16" else ""
        rows.append(
            (f"Chorus {short} fraction of GEMM peak", f"{frac:.0%}", target, verdict(frac >= 0.9) if target else "")
        )
        frac_big = runs[("chorus", dtype, biggest)] * flops / 1e9 / peaks[dtype]
        rows.append((f"Chorus {short} fraction of GEMM peak, B={biggest}", f"{frac_big:.0%}", "", ""))
        per_item = runs[("chorus", dtype, biggest)] / ours
        rows.append(
            (
                f"Chorus {short} B={biggest} vs B=1 per audio second",
                f"{per_item:.2f}×",
                "≥ 1",
                verdict(per_item >= 1),
            )
        )
    bf16 = runs[("chorus", "bfloat16", 1)]
    rows.insert(0, ("Chorus bf16 speed", f"{bf16:.1f}× real time", "≥ 26×", verdict(bf16 >= 26)))
    return rows


def summary(results: dict[str, Result]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    if r := results.get("backbone_speed"):
        rows += speed_rows(r)
    if (r := results.get("precision")) and "skipped" not in r:
        value = f"CER {r['cer_bf16_vs_fp32']:.2%}, {r['identical']}/{r['samples']} identical"
        rows.append(
            ("bf16 vs fp32 transcripts, demo model", value, "≤ 0.5 pt", verdict(r["cer_bf16_vs_fp32"] <= 0.005))
        )
    elif r:
        rows.append(("bf16 vs fp32 transcripts, demo model", r["skipped"], "≤ 0.5 pt", ""))
    if r := results.get("multi_tenant"):
        for n, ratio in r["ratio_to_one_adapter"].items():
            if n != "1":
                rows.append(
                    (
                        f"throughput, {n} distinct adapters / 1",
                        f"{ratio:.3f}",
                        "≥ 0.95 at 64",
                        verdict(ratio >= 0.95) if n == "64" else "",
                    )
                )
    if r := results.get("swap"):
        rows.append(
            (
                "Chorus fp32 / transformers swap-per-request",
                f"{r['chorus_fp32_vs_transformers']:.2f}×",
                "≥ 1.3×",
                verdict(r["chorus_fp32_vs_transformers"] >= 1.3),
            )
        )
        rows.append(
            (
                "Chorus bf16 / transformers fp32 swap-per-request",
                f"{r['chorus_bf16_vs_transformers']:.2f}×",
                "≥ 2.5×",
                verdict(r["chorus_bf16_vs_transformers"] >= 2.5),
            )
        )
        for system in ("transformers_swap", "chorus_float32", "chorus_bfloat16"):
            rows.append((f"p95 latency, 16 clients, {system}", f"{r['levels'][system]['16']['p95_s']:.2f} s", "", ""))
    if r := results.get("memory"):
        for row in r["rows"]:
            rows.append((f"host bytes, {row['tasks']} tasks: full models / Chorus", f"{row['ratio']:.1f}×", "", ""))
    if r := results.get("adapter_cold_load"):
        if "evicting_p50_ms" in r:  # the steady state of a working set larger than the cache
            p50 = r["evicting_p50_ms"]
            rows.append(
                ("adapter cold load p50 (MMS size), cache full", f"{p50:.1f} ms", "≤ 10 ms", verdict(p50 <= 10))
            )
            rows.append(("CPU time per cold load, cache full", f"{r['evicting_cpu_p50_ms']:.1f} ms", "", ""))
        rows.append(
            (
                "adapter cold load p50 (MMS size), cache filling",
                f"{r['p50_ms']:.1f} ms",
                "≤ 10 ms",
                verdict(r["p50_ms"] <= 10),
            )
        )
        rows.append(("adapter cold load p95, cache filling", f"{r['p95_ms']:.1f} ms", "", ""))
        rows.append(("CPU time per cold load, cache filling", f"{r['cpu_p50_ms']:.1f} ms", "", ""))
    if r := results.get("load_dip"):
        dip, noise = r["throughput_ratio_busy_vs_quiet"], abs(1 - r["quiet_odd_vs_even"])
        rows.append(
            (
                "throughput during 10 cold loads / quiet",
                f"{dip:.3f} (noise ±{noise:.3f})",
                "no dip beyond noise",
                verdict(dip >= 1 - max(noise, 0.02)),
            )
        )
    if r := results.get("peers"):
        rows += peer_rows(r)
    if r := results.get("working_set"):
        label = f"served throughput, {r['adapters']} adapters (Zipf s={r['zipf_s']}), cache for {r['cache_adapters']}"
        ratio = r["zipf_over_single"]
        rows.append((f"{label} / one adapter", f"{ratio:.2f}×", "≥ 0.9", verdict(ratio >= 0.9)))
        rows.append(("the same per server CPU second", f"{r['zipf_over_single_per_cpu_second']:.2f}×", "", ""))
        hits = (
            f"{r['hit_ratio']:.0%} hits, {r['loads_per_second']:.2f} loads/s ({r['load_seconds_mean'] * 1000:.0f} ms)"
        )
        rows.append(("adapter cache under that traffic", hits, "", ""))
    if r := results.get("server_load"):
        overhead = r["overhead"]
        rows.append(("HTTP overhead vs direct call, c=1", f"{overhead:+.1%}", "≤ 5%", verdict(overhead <= 0.05)))
        rows.append(("the same, measured inside the server", f"{r['server_side_overhead']:+.1%}", "", ""))
        if "server_cores" in r:
            cores = f"{r['server_cores']:.2f} served / {r['direct_cores']:.2f} direct"
            rows.append(("CPU cores busy while inferring, c=1", cores, "equal", ""))
    return rows


def peer_rows(r: Result) -> list[tuple[str, str, str, str]]:
    """Chorus's default precision against the fastest peer at that precision, per variant and batch size."""
    rows = []
    dtype = r["default_dtype"]
    for variant, v in r["variants"].items():
        for batch in sorted({x["batch"] for x in v["runs"]}):
            at = {x["system"]: x["xrt"] for x in v["runs"] if x["dtype"] == dtype and x["batch"] == batch}
            others = {k: x for k, x in at.items() if k not in ("chorus", "transformers")}
            if "chorus" not in at or not others:
                continue
            best = max(others, key=others.__getitem__)
            ratio = at["chorus"] / others[best]
            label = f"Chorus {dtype} / {best} {dtype}, {variant}, B={batch}"
            rounds = v.get("vs_fastest_peer", {}).get(f"{dtype} {batch}")
            per_round = "" if rounds is None else f"; per round, vs that round's fastest: {rounds:.2f}×"
            rows.append(
                (
                    label,
                    f"{ratio:.2f}× ({at['chorus']:.1f} vs {others[best]:.1f}× real time{per_round})",
                    "≥ 1.0",
                    verdict(ratio >= 1.0),
                )
            )
    return rows


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def details(results: dict[str, Result]) -> str:
    """Per-comparison raw tables."""
    parts = []
    if r := results.get("backbone_speed"):
        rows = [
            (x["system"], x["dtype"], str(x["batch"]), f"{x['seconds'] * 1000:.0f} ms", f"{x['xrt']:.1f}×")
            for x in r["runs"]
        ]
        parts.append(
            "### Backbone speed and batch curve (10 s clips)\n\n"
            + table(rows, ("system", "dtype", "B", "median", "× real time"))
        )
        peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r["gemm_peak_gflops"].items())
        acc = r["bf16_vs_fp32"]
        parts.append(
            f"Model: {r['flops_per_audio_second'] / 1e9:.1f} GFLOP per audio second. GEMM peak at the model's shapes: "
            f"{peaks}. bf16 vs fp32 on the random model: frame argmax agreement {acc['argmax_agreement']:.1%}, "
            f"greedy-transcript CER {acc['cer']:.1%}."
        )
    if (r := results.get("precision")) and "skipped" not in r:
        rows = [(name, fp32, bf16) for name, (fp32, bf16) in r["differences"].items()]
        title = f"bf16 vs fp32 on the demo model ({r['samples']} samples, `{r['demo']}`): the transcripts that differ"
        parts.append(f"### {title}\n\n" + table(rows, ("sample", "fp32", "bf16")))
    if r := results.get("multi_tenant"):
        rows = [(n, f"{v:.2f}×", f"{r['ratio_to_one_adapter'][n]:.3f}") for n, v in r["throughput_xrt"].items()]
        parts.append(
            f"### Multi-tenant ({r['dtype']}, B={r['batch']} × {r['clip_seconds']:.0f} s, "
            "houlsby r=16 on all layers)\n\n"
            + table(rows, ("distinct adapters", "× real time", "vs 1"))
            + "\n\n"
            + notes.MULTI_TENANT
        )
    if r := results.get("swap"):
        rows = [
            (system, c, f"{v['requests_per_s']:.2f}", f"{v['p50_s']:.2f} s", f"{v['p95_s']:.2f} s")
            for system, levels in r["levels"].items()
            for c, v in levels.items()
        ]
        title = "Swap-per-request traffic (4 s clips, random language)"
        parts.append(f"### {title}\n\n" + table(rows, ("system", "clients", "requests/s", "p50", "p95")))
    if r := results.get("server_load"):
        rows = [
            (c, f"{v['audio_per_second']:.1f}", f"{v['p50']:.2f} s", f"{v['p95']:.2f} s")
            for c, v in r["levels"].items()
        ]
        title = f"Server path over HTTP ({r['dtype']}, {r['clip_seconds']:.0f} s clips, `benchmarks/server_load.py`)"
        parts.append(
            f"### {title}\n\n" + table(rows, ("clients", "audio s/s", "p50", "p95")) + "\n\n" + notes.SERVER_PATH
        )
    if r := results.get("peers"):
        for variant, v in r["variants"].items():
            rows = [
                (x["system"], x["dtype"], str(x["batch"]), f"{x['xrt']:.1f}×", f"{x['gemm_fraction']:.0%}")
                for x in sorted(v["runs"], key=lambda x: (x["dtype"], x["batch"], -x["xrt"]))
            ]
            rates = ", ".join(f"{k} {g:.0f} GFLOP/s" for k, g in v["gemm_gflops"].items())
            parts.append(
                f"### Runtimes side by side: `{variant}` ({r['clip_seconds']:.0f} s clips, {r['threads']} threads)\n\n"
                + table(rows, ("system", "dtype", "B", "× real time", "of GEMM rate"))
                + f"\n\nModel: {v['flops_per_audio_second'] / 1e9:.1f} GFLOP per audio second; GEMM at the model's "
                f"shapes in this run: {rates}. " + notes.PEERS
            )
    if r := results.get("memory"):
        rows = [
            (
                str(x["tasks"]),
                f"{x['full_models_bytes'] / 1e9:.1f} GB",
                f"{x['chorus_bytes'] / 1e9:.2f} GB",
                f"{x['ratio']:.1f}×",
            )
            for x in r["rows"]
        ]
        parts.append(
            f"### Memory (fp32; backbone {r['backbone_params'] / 1e6:.0f} M params, "
            f"adapter {r['adapter_params'] / 1e6:.2f} M)\n\n"
            + table(rows, ("tasks", "N full models", "backbone + N adapters", "ratio"))
        )
    if r := results.get("adapter_cold_load"):
        rows = [(k, f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in r.items() if k != "comparison"]
        parts.append("### Adapter cold load\n\n" + table(rows, ("metric", "value")))
    return "\n\n".join(parts)


def plot(results: dict[str, Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if r := results.get("multi_tenant"):
        counts = [int(n) for n in r["throughput_xrt"]]
        left.plot(counts, list(r["throughput_xrt"].values()), marker="o", label=f"Chorus {r['dtype']}")
        left.set_xscale("log")
        left.set_ylim(bottom=0)  # from zero: the spread between points is the machine's noise, not a trend
    left.set(
        xlabel="distinct adapters in the traffic", ylabel="throughput (× real time)", title="Multi-tenant throughput"
    )
    for key in ("transformers_swap", "chorus_float32", "chorus_bfloat16") if "swap" in results else ():
        levels = results["swap"]["levels"][key]
        right.plot([int(c) for c in levels], [v["p95_s"] for v in levels.values()], marker="o", label=f"{key} (4 s)")
    if r := results.get("server_load"):
        label = f"Chorus over HTTP ({r['dtype']}, {r['clip_seconds']:.0f} s)"
        right.plot([int(c) for c in r["levels"]], [v["p95"] for v in r["levels"].values()], marker="s", label=label)
    right.set(xlabel="concurrent clients", ylabel="p95 latency (s)", title="Latency vs concurrency")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU this report was made on, as a reader compares machines: model, cores, bf16 support."""
    model, flags = "unknown CPU", ""
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value
    bf16 = "AVX-512 BF16" if "avx512_bf16" in flags.split() else "no bf16 instructions"
    return f"{os.cpu_count()}-core {model}, {bf16}"


def summary_heading(device: str, today: datetime.date, cpu: str) -> str:
    """Which run the summary comes from, and on what: the file mixes runs of several machines and dates."""
    return f"From `make bench` of {today.isoformat()} on a {cpu} (device: {device or 'unknown'})."


GENERATED_HEADINGS = (  # the sections `make bench` writes; every other `## ` section was measured by its own script
    "How we compare",
    "How to run, and how to read the numbers",
    "Summary",
    "Where the targets are missed, and why",
    "Details",
    "What changed in the engine for these numbers",
)


def kept_sections(docs: Path) -> list[str]:
    """Sections of the current file that `make bench` does not produce (each runs to the next `## ` heading),
    in their order: results of other scripts (live latency, model=auto, a round's side-by-side runs)."""
    if not docs.exists():
        return []
    text = "\n" + docs.read_text()
    kept = []
    for part in text.split("\n## ")[1:]:
        heading = part.split("\n", 1)[0].strip()
        if heading not in GENERATED_HEADINGS:
            kept.append(f"## {part}".strip())
    return kept


def write_report(folder: Path, docs: Path, failures: dict[str, str] | None = None) -> str:
    """Write `docs` (markdown) and a PNG beside it; return the summary table for the terminal."""
    results = load_results(folder)
    rows = summary(results)
    summary_table = table(rows, ("measure", "value", "target", "verdict"))
    device = results.get("backbone_speed", {}).get("device", "")
    if peaks := results.get("backbone_speed", {}).get("gemm_peak_gflops"):
        device += (
            f"; GEMM peak measured during the run: {peaks['float32']:.0f} GFLOP/s fp32, {peaks['bfloat16']:.0f} bf16"
        )
    docs.parent.mkdir(parents=True, exist_ok=True)
    png = docs.with_suffix(".png")
    plotted = plot(results, png)
    failed = "".join(
        f"\n- `{name}` failed: `{err.strip().splitlines()[-1] if err.strip() else 'no output'}`"
        for name, err in (failures or {}).items()
    )
    body = [
        "# Benchmarks",
        notes.how_we_compare(results),
        notes.METHOD.format(device=device or "unknown device"),
        "## Summary\n\n"
        + summary_heading(device, datetime.date.today(), machine())
        + "\n\n"
        + summary_table
        + (f"\n\nFailed in this run:{failed}" if failed else ""),
        f"![throughput vs adapters, latency vs concurrency]({png.name})"
        if plotted
        else "(no plot: matplotlib missing; `pip install -e .[bench]`)",
        "## Where the targets are missed, and why\n\n" + notes.misses(results),
        "## Details\n\n" + details(results),
        notes.ENGINE_CHANGES,
    ]
    kept = kept_sections(docs)
    docs.write_text("\n\n".join(body + kept) + "\n")
    return summary_table
