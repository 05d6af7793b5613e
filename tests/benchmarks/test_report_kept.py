"""`make bench` rewrites docs/benchmarks.md but keeps the sections other scripts measure."""

from __future__ import annotations

from benchmarks.report import kept_sections


def test_the_live_latency_section_survives_a_rewrite(tmp_path):
    docs = tmp_path / "benchmarks.md"
    assert kept_sections(docs) == []
    live = "## Live transcription latency\n\n| a |\n\nmore"
    docs.write_text(f"# Benchmarks\n\n## Summary\n\nold\n\n{live}\n\n## Details\n")
    assert kept_sections(docs) == [live]
    docs.write_text("# Benchmarks\n\n## Summary\n")
    assert kept_sections(docs) == []


def test_every_section_make_bench_does_not_write_survives_in_order(tmp_path):
    """A round's side-by-side results and other scripts' sections (model=auto in one pass) were dropped before."""
    docs = tmp_path / "benchmarks.md"
    one_pass = "## model=auto in one pass (2026-12-01)\n\n| path | s |\n\nprose"
    round_ = "## This round (2026-12-01): runtimes side by side\n\nnumbers"
    live = "## Live transcription latency\n\n| a |"
    generated = "## How we compare\n\nx\n\n## Summary\n\nold\n\n## Details\n\nd"
    docs.write_text(f"# Benchmarks\n\n{one_pass}\n\n{round_}\n\n{generated}\n\n{live}\n")
    assert kept_sections(docs) == [one_pass, round_, live]


def test_the_summary_names_the_machine_and_the_day(tmp_path):
    """The file mixes runs of several machines: the generated summary says which one it comes from."""
    import datetime

    from benchmarks.report import machine, summary_heading

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512_bf16\n\nmodel name\t: AMD EPYC 9R14\n")
    cpu = machine(cpuinfo)
    assert cpu.endswith("-core AMD EPYC 9R14, AVX-512 BF16")
    heading = summary_heading("cpu (2 threads)", datetime.date(2026, 12, 4), cpu)
    assert "2026-12-04" in heading and "AMD EPYC 9R14" in heading and "cpu (2 threads)" in heading
    cpuinfo.write_text("model name\t: Intel Xeon\nflags\t\t: fpu avx2\n")
    assert machine(cpuinfo).endswith("Intel Xeon, no bf16 instructions")
