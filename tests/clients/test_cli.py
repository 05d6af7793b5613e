"""`chorus transcribe` / `chorus adapters ...` in-process against the scripted transport: output, files, exit codes.

The same flows run as a subprocess against a real server in tests/clients/test_integration.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from chorus_client import cli, errors
from chorus_client.cli import main
from tests.clients.fake_server import FakeServer, envelope


@pytest.fixture
def server(monkeypatch) -> FakeServer:
    fake = FakeServer()
    real = cli.Chorus

    def client(url, api_key):
        return real(url, api_key, transport=httpx.MockTransport(fake), sleep=lambda s: None)

    monkeypatch.setattr(cli, "Chorus", client)
    return fake


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.NotFoundError("x"), cli.EXIT_NOT_FOUND),
        (FileNotFoundError("x"), cli.EXIT_NOT_FOUND),
        (errors.InvalidRequestError("x"), cli.EXIT_REJECTED),
        (errors.ConflictError("x"), cli.EXIT_REJECTED),
        (ValueError("x"), cli.EXIT_REJECTED),
        (errors.AuthenticationError("x"), cli.EXIT_AUTH),
        (errors.PermissionDeniedError("x"), cli.EXIT_AUTH),
        (errors.RateLimitError("x"), cli.EXIT_UNAVAILABLE),
        (errors.OverloadedError("x"), cli.EXIT_UNAVAILABLE),
        (errors.DeadlineExceededError("x"), cli.EXIT_UNAVAILABLE),
        (errors.InternalServerError("x"), cli.EXIT_UNAVAILABLE),
        (errors.APIConnectionError("x"), cli.EXIT_UNAVAILABLE),
        (errors.ChorusError("x"), cli.EXIT_FAILURE),
        (RuntimeError("x"), cli.EXIT_FAILURE),
    ],
)
def test_exit_codes(exc, code):
    assert cli.exit_code(exc) == code


def test_transcribe_prints_text_and_writes_files(server, tmp_path, capsys):
    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(b"x")
    assert main(["transcribe", str(tmp_path / "a.wav"), "--adapter", "fr"]) == 0
    assert capsys.readouterr().out == "bonjour (text)\n"
    out = tmp_path / "out"
    assert main(["transcribe", str(tmp_path), "-a", "fr", "--format", "srt", "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.srt", "b.srt"]
    assert (out / "a.srt").read_text() == "bonjour (srt)"
    assert capsys.readouterr().out.splitlines()[1] == f"{tmp_path / 'b.wav'} -> {out / 'b.srt'}"
    assert main(["transcribe", str(tmp_path / "a.wav"), "-a", "fr", "--format", "verbose_json"]) == 0
    assert json.loads(capsys.readouterr().out)["segments"][0]["text"] == "bonjour"


def test_transcribe_json_report_and_partial_failure(server, tmp_path, capsys):
    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(b"x")
    server.script = [envelope(404, "not_found_error", "adapter 'xx' not found", "adapter_not_found")]
    code = main(["transcribe", str(tmp_path), "-a", "fr", "--format", "json", "--concurrency", "1", "--json"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_NOT_FOUND
    report = json.loads(captured.out)
    assert report[0]["error"]["code"] == "adapter_not_found" and report[0]["result"] is None
    assert report[0]["adapter"] == "fr"  # the adapter given: no version served the failed file
    assert report[1]["result"] == {"text": "bonjour"} and report[1]["adapter"] == "fr@2"
    assert "adapter 'xx' not found" in captured.err


def test_transcribe_missing_file_and_bad_concurrency(server, tmp_path, capsys):
    assert main(["transcribe", str(tmp_path / "nope.wav"), "-a", "fr"]) == cli.EXIT_NOT_FOUND
    assert "no such file" in capsys.readouterr().err
    assert server.requests == []
    (tmp_path / "a.wav").write_bytes(b"x")
    assert main(["transcribe", str(tmp_path / "a.wav"), "-a", "fr", "--concurrency", "0"]) == cli.EXIT_REJECTED
    assert main(["transcribe", str(tmp_path / "empty"), "-a", "fr"]) == cli.EXIT_NOT_FOUND
    (tmp_path / "empty").mkdir()
    assert main(["transcribe", str(tmp_path / "empty"), "-a", "fr"]) == cli.EXIT_NOT_FOUND
    assert server.requests == []


def test_a_missing_file_in_a_batch_is_reported_and_the_rest_still_sent(server, tmp_path, capsys):
    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(b"x")
    files = [str(tmp_path / "a.wav"), str(tmp_path / "gone.wav"), str(tmp_path / "b.wav")]
    args = ["transcribe", *files, "-a", "fr", "--format", "json", "--json", "--concurrency", "1"]
    assert main(args) == cli.EXIT_NOT_FOUND
    captured = capsys.readouterr()
    report = {Path(entry["file"]).name: entry for entry in json.loads(captured.out)}
    assert report["gone.wav"]["error"]["code"] == "file_not_found" and report["gone.wav"]["result"] is None
    assert report["a.wav"]["result"] == report["b.wav"]["result"] == {"text": "bonjour"}
    assert len(server.requests) == 2
    assert f"{tmp_path / 'gone.wav'}: no such file" in captured.err


def test_json_keeps_non_ascii(server, tmp_path, capsys):
    (tmp_path / "a.wav").write_bytes(b"x")
    server.script = [
        httpx.Response(200, json={"text": "ça déjà vu — 日本"}, headers={"x-chorus-adapter": "fr@2"}),
    ]
    assert main(["transcribe", str(tmp_path / "a.wav"), "-a", "fr", "--format", "json", "--json"]) == 0
    out = capsys.readouterr().out
    assert "ça déjà vu — 日本" in out and "\\u" not in out
    assert json.loads(out)[0]["result"]["text"] == "ça déjà vu — 日本"


def test_unknown_adapter_hint_names_the_cli_command(server, tmp_path, capsys):
    (tmp_path / "a.wav").write_bytes(b"x")
    message = "adapter 'xx' not found; list adapters with GET /v1/adapters"
    server.script = [envelope(404, "not_found_error", message, "adapter_not_found")]
    assert main(["transcribe", str(tmp_path / "a.wav"), "-a", "xx"]) == cli.EXIT_NOT_FOUND
    assert "adapter 'xx' not found; list adapters with `chorus adapters list`" in capsys.readouterr().err
    server.script = [envelope(404, "not_found_error", message, "adapter_not_found")]
    assert main(["adapters", "show", "xx"]) == cli.EXIT_NOT_FOUND
    err = capsys.readouterr().err
    assert "`chorus adapters list`" in err and "GET /v1/adapters" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"chorus {version('chorus-client')} (client)")


def test_a_v1_base_url_means_the_server_root(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    assert main(["transcribe", str(tmp_path / "a.wav"), "-a", "fr", "--url", "http://127.0.0.1:8000/v1/"]) == 0
    assert str(server.requests[-1].url) == "http://127.0.0.1:8000/v1/audio/transcriptions"


def test_adapter_commands(server, tmp_path, capsys):
    assert main(["adapters", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == list(cli.ADAPTER_COLUMNS) and [row.split()[0] for row in table[1:]] == ["fr", "de"]
    assert main(["adapters", "list", "--json"]) == 0
    assert [a["id"] for a in json.loads(capsys.readouterr().out)] == ["fr", "de"]
    assert main(["adapters", "show", "fr@1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["adapters", "show", "fr"]) == 0
    shown = capsys.readouterr().out
    assert "sha256: abab" in shown
    assert "created_at: 1970-01-01 00:00:01 UTC" in shown  # a date, not Unix seconds
    source = tmp_path / "fr.safetensors"
    source.write_bytes(b"abc")
    assert main(["adapters", "upload", str(source), "--id", "fr", "--visibility", "public"]) == 0
    assert capsys.readouterr().out.startswith("published fr@3")
    assert server.requests[-1].url.params["visibility"] == "public"
    assert main(["adapters", "pin", "fr"]) == 0 and "pinned fr@2" in capsys.readouterr().out
    assert main(["adapters", "unpin", "fr"]) == 0
    assert main(["adapters", "delete", "fr@1"]) == 0 and "deleted fr@1" in capsys.readouterr().out
    assert main(["adapters", "delete", "zz"]) == cli.EXIT_NOT_FOUND
    assert "no route DELETE /v1/adapters/zz" in capsys.readouterr().err
    assert main(["adapters", "upload", str(tmp_path / "missing"), "--id", "fr"]) == cli.EXIT_NOT_FOUND


def test_a_missing_key_points_to_the_cli_options(server, tmp_path, capsys):
    (tmp_path / "a.wav").write_bytes(b"x")
    message = "missing API key: send 'Authorization: Bearer <key>'"
    server.script = [envelope(401, "authentication_error", message, "missing_api_key")]
    assert main(["transcribe", str(tmp_path / "a.wav"), "-a", "fr"]) == cli.EXIT_AUTH
    err = capsys.readouterr().err
    assert "missing API key: pass --api-key or set CHORUS_API_KEY" in err and "Authorization" not in err
    server.script = [envelope(401, "authentication_error", message, "missing_api_key")]
    assert main(["adapters", "list"]) == cli.EXIT_AUTH
    assert "pass --api-key or set CHORUS_API_KEY" in capsys.readouterr().err


def test_errors_map_to_exit_codes_through_main(server, capsys):
    server.script = [envelope(401, "authentication_error", "missing API key")]
    assert main(["adapters", "list", "--api-key", "bad"]) == cli.EXIT_AUTH
    assert "missing API key (401)" in capsys.readouterr().err
    server.script = [envelope(503, "overloaded_error", "busy")] * 4
    assert main(["adapters", "show", "fr"]) == cli.EXIT_UNAVAILABLE


def test_unreachable_server():
    assert main(["adapters", "list", "--url", "http://127.0.0.1:9"]) == cli.EXIT_UNAVAILABLE


def test_the_command_and_its_installed_plugins_start_without_torch():
    code = (
        "import sys; from chorus_client.cli import build_parser, installed_plugins\n"
        "plugins = installed_plugins(); build_parser(plugins)\n"
        "sys.exit(3 if not plugins else 'torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_server_commands_without_the_server_say_what_to_install(capsys):
    for command in (["serve"], ["dev", "random-model", "--out", "x"], ["train-adapter", "--help"]):
        assert main(command, plugins=[]) == cli.EXIT_USAGE
        assert "needs the Chorus server" in capsys.readouterr().err
    # Client commands still work: this one fails only because nothing listens on port 9.
    assert main(["adapters", "list", "--url", "http://127.0.0.1:9"], plugins=[]) == cli.EXIT_UNAVAILABLE


def test_help_lists_exit_codes():
    result = subprocess.run(
        [sys.executable, "-m", "chorus_client.cli", "transcribe", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "exit codes" in result.stdout and "--adapter" in result.stdout
