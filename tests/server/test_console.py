"""The console is served by the app itself: every file it loads comes from the package, nothing from a CDN."""

from __future__ import annotations

import re

from chorus_server.console import STATIC_DIR


def test_the_console_and_all_its_files_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    loaded = set(re.findall(r'(?:src|href)="(/console/[^"]+)"', page.text))
    for source in STATIC_DIR.glob("*.js"):
        loaded |= {f"/console/{name}" for name in re.findall(r'from "\./([^"]+)"', source.read_text())}
        loaded |= set(re.findall(r'addModule\("(/console/[^"]+)"\)', source.read_text()))
    assert {"/console/app.js", "/console/style.css", "/console/pcm-worklet.js", "/console/live.js"} <= loaded
    for path in loaded:
        response = client.get(path)
        assert response.status_code == 200, path
    assert client.get("/console/../settings.py").status_code == 404


def test_no_file_of_the_console_reaches_outside_the_server():
    for path in STATIC_DIR.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()), path.name
