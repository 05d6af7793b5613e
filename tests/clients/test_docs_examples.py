"""The client docs' examples work as written: `chorus` is found (the README activates .venv before its first
`chorus` command), and the upload examples cannot silently add a version to an existing adapter."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bash_lines(markdown: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_activates_the_venv_before_its_first_chorus_command():
    lines = bash_lines((ROOT / "README.md").read_text())
    first_chorus = next(i for i, line in enumerate(lines) if line.startswith("chorus "))
    assert ". .venv/bin/activate" in lines[:first_chorus]


def test_upload_examples_only_create():
    text = (ROOT / "docs" / "clients.md").read_text()
    python = "".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    calls = re.findall(r"upload_adapter\((.*)\)", python)
    assert calls and all("expected_version=0" in call for call in calls)
    uploads = [line for line in bash_lines(text) if line.startswith("chorus adapters upload")]
    assert uploads and all("--expected-version 0" in line for line in uploads)
