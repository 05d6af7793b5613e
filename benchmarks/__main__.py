"""`python -m benchmarks` (`make bench`): every comparison, one child process each, then the report.

    python -m benchmarks [--quick] [--device cpu] [--only backbone_speed,swap] [--results .bench/results]
                         [--docs docs/benchmarks.md]

A comparison that fails is reported as failed (with the end of its stderr); the others still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import write_report

COMPARISONS = (
    "backbone_speed",
    "peers",
    "precision",
    "multi_tenant",
    "swap",
    "memory",
    "adapter_cold_load",
    "load_dip",
    "working_set",
    "server_load",
)


def command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out", str(out), "--device", args.device]
    if name == "adapter_cold_load":
        return [*cmd, "--runs", "3" if args.quick else "40"]
    if name == "server_load":  # its own flags (benchmarks/server_load.py)
        quick = ["--preset", "tiny", "--clip", "1", "--requests", "4", "--concurrency", "1", "4", "--pairs", "2"]
        return [sys.executable, "-m", "benchmarks.server_load", "--json", str(out), *(quick if args.quick else [])]
    return [*cmd, "--quick"] if args.quick else cmd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models, one round: checks the harness, not speed")
    p.add_argument("--device", default="auto")
    p.add_argument("--only", default="", help="comma-separated subset of " + ", ".join(COMPARISONS))
    p.add_argument("--results", type=Path, default=Path(".bench/results"))
    p.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n] or list(COMPARISONS)
    unknown = sorted(set(names) - set(COMPARISONS))
    if unknown:
        p.error(f"unknown comparisons {unknown}; expected some of {', '.join(COMPARISONS)}")
    args.results.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    for name in names:
        out = args.results / f"{name}.json"
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        proc = subprocess.run(command(name, args, out), capture_output=True, text=True)
        print(f"   {time.perf_counter() - start:.0f} s, exit {proc.returncode}", flush=True)
        if proc.returncode != 0 or not out.is_file():
            failures[name] = proc.stderr[-2000:]
            print(proc.stderr[-2000:], file=sys.stderr)
    print(write_report(args.results, args.docs, failures))


if __name__ == "__main__":
    main()
