"""Generate the blocking client (clients/chorus_client/client.py) from the asyncio one (async_client.py).

The client is written once, as asyncio code; unasync (the tool httpcore uses) drops async/await and renames the
async names below to their blocking twins, then ruff tidies the result (import order, parentheses, format).
`--check` fails when client.py is not what the generator makes (tests/clients/test_generated_client.py runs it).

    python tools/unasync_client.py           # rewrite client.py
    python tools/unasync_client.py --check   # exit 1 if client.py is stale
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync

PACKAGE = Path(__file__).resolve().parents[1] / "clients" / "chorus_client"
SOURCE, TARGET = PACKAGE / "async_client.py", PACKAGE / "client.py"
RENAMES = {
    "AsyncChorus": "Chorus",
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "aclose": "close",
    "_async_io": "_sync_io",
}
HEADER = "# Generated from async_client.py by tools/unasync_client.py (make client); do not edit.\n"


def generate() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "_async" / "client.py"
        source.parent.mkdir()
        source.write_text(SOURCE.read_text())
        unasync.unasync_files([str(source)], [unasync.Rule("/_async/", "/_sync/", additional_replacements=RENAMES)])
        text = HEADER + (Path(tmp) / "_sync" / "client.py").read_text()
    ruff = [sys.executable, "-m", "ruff"]
    # Sort imports, drop extra parentheses, `yield from` where a loop only yields; then format.
    for command in (["check", "--fix-only", "--unsafe-fixes", "--quiet"], ["format"]):
        run = [*ruff, *command, "--stdin-filename", str(TARGET), "-"]
        text = subprocess.run(run, input=text, capture_output=True, text=True, check=True, cwd=TARGET.parent).stdout
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that client.py is up to date")
    args = parser.parse_args()
    generated = generate()
    if args.check:
        if TARGET.read_text() != generated:
            print(f"{TARGET} is stale: run `make client`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
