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
