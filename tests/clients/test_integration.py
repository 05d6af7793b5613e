"""The SDK and the `chorus` CLI against a real server: uvicorn on 127.0.0.1 serving the tiny random MMS model.

Two servers: `server` with auth on (tenants alice and bob, one admin) and ordinary limits, and `strict` whose
limits are set so that 429, 503 and 504 can be produced on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chorus_client import (
    APIConnectionError,
    AsyncChorus,
    AuthenticationError,
    Chorus,
    ConflictError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    Transcription,
    VerboseTranscription,
)
from chorus_client.cli import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_REJECTED
from chorus_server.background import ServerProcess, free_port
from tests.clients.live_server import ROOT, write_wav
from tests.deploy.test_packaging import CONTRACT_METRICS, dashboard_exprs, metric_names, series_names

KEYS = {"k-alice": "alice", "k-bob": "bob"}
ADMIN = "k-admin"
MAX_ADAPTER_BYTES = 64 * 1024
CUDA_ONLY = {"chorus_device_memory_bytes"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from chorus_server.engine.random_model import write_random_model

    path = tmp_path_factory.mktemp("tiny-mms")
    write_random_model(path, "tiny-mms", num_adapters=2, seed=1)
    return path


def base_env(model_dir: Path, workdir: Path) -> dict[str, str]:
    return {
        "CHORUS_BACKBONE": str(model_dir),
        "CHORUS_STORE": str(workdir / "store"),
        "CHORUS_DATA_DIR": str(workdir / "data"),
        "CHORUS_DEVICE": "cpu",
        "CHORUS_DTYPE": "float32",
        "CHORUS_SEED_STORE": "false",
        "CHORUS_AUTH__KEYS": json.dumps(KEYS),
        "CHORUS_AUTH__ADMIN_KEYS": json.dumps([ADMIN]),
        # The clips are tones, not speech: detection would (rightly) send nothing to the backbone.
        "CHORUS_VAD__ENABLED": "false",
    }


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server")
    env = base_env(model_dir, workdir) | {"CHORUS_LIMITS__MAX_ADAPTER_BYTES": str(MAX_ADAPTER_BYTES)}
    with ServerProcess(env, workdir) as live:
        yield live.url


@pytest.fixture(scope="module")
def strict(model_dir, tmp_path_factory):
    """Batches wait 10 s for company but requests time out after 3 s; one request per tenant; 2 s of queue."""
    workdir = tmp_path_factory.mktemp("strict")
    env = base_env(model_dir, workdir) | {
        "CHORUS_BATCH__MAX_WAIT_MS": "10000",
        "CHORUS_LIMITS__REQUEST_TIMEOUT_SECONDS": "3",
        "CHORUS_LIMITS__TENANT__CONCURRENT_REQUESTS": "1",
        "CHORUS_LIMITS__MAX_QUEUE_AUDIO_SECONDS": "2.0",
    }
    with ServerProcess(env, workdir) as live:
        yield live.url


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("audio")
    return {
        "short": write_wav(folder / "short.wav", 0.3, seed=1),
        "one": write_wav(folder / "one.wav", 1.0, seed=2),
        "long": write_wav(folder / "long.wav", 2.0, seed=3),
    }


def adapter_file(model_dir: Path, index: int = 0) -> Path:
    return sorted((model_dir / "adapters").glob("*.safetensors"))[index]


def test_sync_client_every_method(server, model_dir, audio):
    with Chorus(server, "k-alice") as alice:
        assert alice.health().status == "ok"
        assert alice.ready()["backbone"].startswith("w2v2-")
        first = alice.upload_adapter(
            adapter_file(model_dir), "sync-a", visibility="public", expected_version=0, progress=True
        )
        assert (first.version, first.owner, first.visibility) == (1, "alice", "public")
        second = alice.upload_adapter(adapter_file(model_dir), "sync-a", expected_version=1)
        assert second.version == 2 and second.versions == [1, 2]
        assert alice.get_adapter("sync-a").ref == "alice/sync-a@2"  # full ID: owner/name
        assert alice.get_adapter("sync-a@1").version == 1
        assert "alice/sync-a" in [a.id for a in alice.iter_adapters(page_size=1)]
        assert alice.list_adapters(limit=1).data
        assert "alice/sync-a" in [m.id for m in alice.list_models().data]
        assert alice.get_adapter("alice/sync-a@1").version == 1

        plain = alice.transcribe(audio["one"], "sync-a")
        assert type(plain) is Transcription and plain.adapter == "alice/sync-a@2" and plain.words is None
        worded = alice.transcribe(audio["one"], "sync-a@1", word_timestamps=True)
        assert worded.adapter == "alice/sync-a@1" and worded.words is not None
        verbose = alice.transcribe(audio["one"], "sync-a", response_format="verbose_json", word_timestamps=True)
        assert type(verbose) is VerboseTranscription and verbose.duration == pytest.approx(1.0, abs=0.01)
        assert verbose.segments is not None and verbose.words is not None and verbose.text == plain.text
        assert alice.transcribe(audio["one"], "sync-a", response_format="text").strip() == plain.text
        assert isinstance(alice.transcribe(audio["one"], "sync-a", response_format="srt"), str)
        assert alice.transcribe(audio["one"], "sync-a", response_format="vtt").startswith("WEBVTT")
        with audio["one"].open("rb") as f:
            assert alice.transcribe(f, "sync-a").text == plain.text
        assert alice.transcribe(audio["one"].read_bytes(), "sync-a", filename="x.wav").text == plain.text

        pinned = alice.pin("sync-a")
        assert pinned.pinned and pinned.resident
        assert not alice.unpin("sync-a").pinned

        assert alice.delete_adapter("sync-a@1").version == 1
        with pytest.raises(NotFoundError):
            alice.get_adapter("sync-a@1")
        assert alice.delete_adapter("sync-a").deleted
        with pytest.raises(NotFoundError):
            alice.get_adapter("sync-a")


def test_every_error_class_a_healthy_server_can_produce(server, model_dir, audio, tmp_path):
    with Chorus(server, "k-alice") as alice, Chorus(server, "k-bob") as bob:
        with pytest.raises(AuthenticationError) as info:
            Chorus(server, "k-nobody").list_adapters()
        assert info.value.code == "invalid_api_key" and info.value.status == 401
        with Chorus(server, "") as anonymous, pytest.raises(AuthenticationError, match="missing API key"):
            anonymous.list_models()

        alice.upload_adapter(adapter_file(model_dir), "err-public", visibility="public")
        alice.upload_adapter(adapter_file(model_dir), "err-private")
        with pytest.raises(PermissionDeniedError) as denied:
            bob.delete_adapter("alice/err-public")
        assert denied.value.status == 403
        with pytest.raises(NotFoundError):  # private adapters of others look missing
            bob.transcribe(audio["short"], "err-private")
        with pytest.raises(NotFoundError) as missing:
            alice.transcribe(audio["short"], "no-such-adapter")
        assert missing.value.code == "adapter_not_found"

        with pytest.raises(ConflictError) as conflict:
            alice.upload_adapter(adapter_file(model_dir), "err-public", expected_version=7)
        assert conflict.value.code == "version_conflict"
        garbage = tmp_path / "garbage.safetensors"
        garbage.write_bytes(b"not a safetensors file" * 10)
        with pytest.raises(InvalidRequestError) as invalid:
            alice.upload_adapter(garbage, "err-garbage")
        assert (invalid.value.status, invalid.value.code) == (422, "invalid_adapter")
        huge = tmp_path / "huge.safetensors"
        huge.write_bytes(b"\0" * (MAX_ADAPTER_BYTES + 1))
        with pytest.raises(InvalidRequestError) as too_large:
            alice.upload_adapter(huge, "err-huge")
        assert (too_large.value.status, too_large.value.code) == (413, "file_too_large")
        with pytest.raises(InvalidRequestError) as not_audio:
            alice.transcribe(b"this is not audio at all" * 50, "err-public", filename="x.wav")
        assert not_audio.value.status in (400, 415) and not_audio.value.code
        with pytest.raises(InvalidRequestError) as empty:
            alice.transcribe(b"", "err-public")
        assert (empty.value.status, empty.value.code) == (400, "empty_audio")

    with Chorus(f"http://127.0.0.1:{free_port()}") as nowhere, pytest.raises(APIConnectionError):
        nowhere.health()


def test_rate_limit_overload_and_deadline_with_retry_after(strict, model_dir, audio):
    """One slow request holds alice's only slot; meanwhile 429 and 503 are retried per Retry-After, then raised.
    It is slow because its batch waits for company (10 s) past its deadline (3 s): a batch waits only while
    another request is on its way, so an upload that has begun and not finished stays in flight meanwhile."""
    with Chorus(strict, ADMIN) as admin:
        admin.upload_adapter(adapter_file(model_dir), "limits", visibility="public")
    with upload_in_progress(strict, ADMIN, audio["short"]):
        _rate_limit_overload_and_deadline(strict, audio)


def _rate_limit_overload_and_deadline(strict: str, audio: dict[str, Path]) -> None:
    holder_error: list[BaseException] = []

    def hold_the_slot() -> None:
        with Chorus(strict, "k-alice", retry=RetryPolicy(max_retries=0)) as holder:
            try:
                holder.transcribe(audio["short"], "limits")
            except BaseException as exc:
                holder_error.append(exc)

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    try:
        wait_until_queued(strict)
        sleeps: list[float] = []
        with Chorus(strict, "k-alice", sleep=sleeps.append) as alice:
            with pytest.raises(RateLimitError) as limited:
                alice.transcribe(audio["short"], "limits")
            assert limited.value.code == "rate_limit_exceeded" and limited.value.retry_after == 1.0
            assert sleeps == [1.0] * alice.retry.max_retries
        with Chorus(strict, "k-bob", sleep=sleeps.append) as bob:  # over its share of the full queue: 503
            sleeps.clear()
            with pytest.raises(OverloadedError) as overloaded:
                bob.transcribe(audio["long"], "limits")
            assert overloaded.value.code == "queue_full" and overloaded.value.retry_after is not None
            assert sleeps == [overloaded.value.retry_after] * bob.retry.max_retries
    finally:
        holder.join(timeout=60)
    assert len(holder_error) == 1 and isinstance(holder_error[0], DeadlineExceededError)
    assert holder_error[0].code == "deadline_exceeded"


def wait_until_queued(url: str, timeout: float = 30.0) -> None:
    wait_for_gauge(url, "chorus_queue_depth", "the holding request never reached the queue", timeout)


def wait_for_gauge(url: str, name: str, failure: str, timeout: float = 30.0) -> None:
    """Until the gauge `name` is at least 1."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scrape = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
        families = {f.name: f for f in text_string_to_metric_families(scrape)}
        gauge = families.get(name)
        if gauge is not None and gauge.samples and gauge.samples[0].value >= 1:
            return
        time.sleep(0.05)  # polling a subprocess's state, not timing a result
    raise AssertionError(failure)


@contextlib.contextmanager
def upload_in_progress(url: str, key: str, wav: Path) -> Iterator[None]:
    """A transcription whose upload has begun and stalls halfway (raw socket): in flight, not yet queued."""
    boundary = "chorus-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nlimits\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + wav.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    parsed = httpx.URL(url)
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {parsed.host}:{parsed.port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parsed.host, parsed.port)) as conn:
        conn.sendall(head + body[: len(body) // 2])
        wait_for_gauge(url, "chorus_requests_in_flight", "the stalled upload never reached the server")
        yield


def test_async_client(server, model_dir, audio, tmp_path):
    folder = tmp_path / "calls"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(audio["one"], folder / f"{name}.wav")
    (folder / "notes.txt").write_text("not audio")

    async def flow() -> None:
        async with AsyncChorus(server, "k-bob") as bob:
            uploaded = await bob.upload_adapter(adapter_file(model_dir, 1), "async-b", progress=True)
            assert uploaded.owner == "bob"
            one = await bob.transcribe(audio["one"], "async-b", response_format="verbose_json")
            results = await bob.transcribe_folder(folder, "async-b", concurrency=2, progress=True)
            assert [r.path.name for r in results] == ["a.wav", "b.wav", "c.wav"]
            assert all(isinstance(r.result, Transcription) and r.result.text == one.text for r in results)
            assert "bob/async-b" in [a.id async for a in bob.iter_adapters()]
            assert (await bob.get_adapter("async-b")).ref == "bob/async-b@1"
            assert (await bob.pin("async-b")).pinned and not (await bob.unpin("async-b")).pinned
            assert (await bob.health()).status == "ok"
            assert (await bob.delete_adapter("async-b")).deleted
            with pytest.raises(NotFoundError):
                await bob.transcribe(io.BytesIO(audio["one"].read_bytes()), "async-b")

    asyncio.run(flow())


def chorus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `chorus` console script (chorus_server.cli:main), importing this checkout."""
    exe = shutil.which("chorus") or str(Path(sys.executable).parent / "chorus")
    # The checkout's packages first: an editable install elsewhere (another worktree) must not answer instead.
    here = [str(ROOT / part) for part in ("server", "adapter_store", "clients")] + [str(ROOT)]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(here), **(env or {})}
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, env=full_env)


def test_cli_upload_list_transcribe_delete(server, model_dir, audio, tmp_path):
    env = {"CHORUS_URL": server, "CHORUS_API_KEY": "k-alice"}
    up = chorus("adapters", "upload", str(adapter_file(model_dir)), "--id", "cli-a", "--json", env=env)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["version"] == 1 and up.stderr == ""  # no progress bar without a TTY

    listed = chorus("adapters", "list", env=env)
    assert listed.returncode == 0 and any(line.split()[0] == "alice/cli-a" for line in listed.stdout.splitlines()[1:])
    shown = chorus("adapters", "show", "cli-a@1", "--json", env=env)
    assert json.loads(shown.stdout)["owner"] == "alice"

    text = chorus("transcribe", str(audio["one"]), "--adapter", "cli-a", "--progress", env=env)
    assert text.returncode == 0, text.stderr
    assert "transcribing" in text.stderr and text.stdout.strip()  # a forced bar on a pipe: drawn, harmless
    out = tmp_path / "out"
    files = chorus("transcribe", str(audio["one"]), str(audio["short"]), "-a", "cli-a@1", "--format", "vtt",
                   "--out", str(out), "--json", env=env)  # fmt: skip
    assert files.returncode == 0, files.stderr
    report = json.loads(files.stdout)
    assert [r["adapter"] for r in report] == ["alice/cli-a@1", "alice/cli-a@1"]
    assert sorted(p.name for p in out.iterdir()) == ["one.vtt", "short.vtt"]
    assert (out / "one.vtt").read_text().startswith("WEBVTT")

    assert chorus("adapters", "pin", "cli-a", env=env).returncode == 0
    assert chorus("adapters", "unpin", "cli-a", env=env).returncode == 0
    deleted = chorus("adapters", "delete", "cli-a", env=env)
    assert deleted.returncode == 0 and "deleted alice/cli-a" in deleted.stdout
    gone = chorus("transcribe", str(audio["one"]), "-a", "cli-a", env=env)
    assert gone.returncode == EXIT_NOT_FOUND and "not found" in gone.stderr
    assert chorus("adapters", "list", "--api-key", "wrong", "--url", server).returncode == EXIT_AUTH
    bad = chorus("adapters", "upload", str(audio["one"]), "--id", "cli-bad", env=env)
    assert bad.returncode == EXIT_REJECTED and "invalid" in bad.stderr.lower()


def test_cli_import_mms_converts_locally_and_uploads(server, model_dir, audio):
    env = {"CHORUS_URL": server, "CHORUS_API_KEY": ADMIN}
    imported = chorus(
        "adapters", "import-mms", str(model_dir / "adapter.fra.safetensors"), "--vocab", str(model_dir / "vocab.json"),
        "--language", "fra", "--id", "mms-fra", "--json", env=env,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    record = json.loads(imported.stdout)
    assert (record["kind"], record["language"], record["visibility"]) == ("mms", "fra", "public")
    assert chorus("transcribe", str(audio["one"]), "-a", "mms-fra", env=env).returncode == 0
    wrong = chorus(
        "adapters", "import-mms", str(model_dir / "adapter.fra.safetensors"), "--vocab", str(model_dir / "vocab.json"),
        "--language", "xxx", "--id", "mms-xxx", env=env,
    )  # fmt: skip
    assert wrong.returncode == EXIT_REJECTED and "xxx" in wrong.stderr


def test_dashboard_names_only_metrics_the_server_exports(server, model_dir, audio):
    with Chorus(server, ADMIN) as admin:  # some traffic, so that every labelled series exists
        admin.upload_adapter(adapter_file(model_dir), "metrics-a")
        admin.transcribe(audio["one"], "metrics-a")
        text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    exported: dict[str, set[str]] = {"counter": set(), "histogram": set(), "gauge": set()}
    for family in text_string_to_metric_families(text):
        # prometheus_client also exports a `<name>_created` gauge per counter and histogram: not dashboard material.
        if family.name.startswith("chorus_") and family.type in exported and not family.name.endswith("_created"):
            exported[family.type].add(family.name + ("_total" if family.type == "counter" else ""))
    # The contract's list is what the dashboard test without a server checks against; it must be the truth.
    assert {kind: names - CUDA_ONLY for kind, names in CONTRACT_METRICS.items()} == exported
    names = series_names(exported) | CUDA_ONLY
    for title, expr in dashboard_exprs():
        assert metric_names(expr) <= names, f"panel {title!r}: {metric_names(expr) - names}"


def lexicon_for(adapter: Path) -> bytes:
    """Three words the adapter can spell (its random vocabulary's first characters)."""
    from chorus_server.decoding.request import spelling_symbols
    from chorus_server.engine import load_adapter

    letters = sorted(spelling_symbols(load_adapter(adapter).vocab))
    return "\n".join(letters[i] * 2 for i in range(3)).encode() + b"\n"


def test_decoding_files_through_the_sdk_and_the_cli(server, model_dir, audio, tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_bytes(lexicon_for(adapter_file(model_dir)))
    arpa = tmp_path / "lm.arpa"
    arpa.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\t<s>\n-1.0\t</s>\n\n\\end\\\n")
    with Chorus(server, "k-alice") as alice:
        with_lm = alice.upload_adapter(
            adapter_file(model_dir), "sdk-lm", lm=arpa, lexicon=lexicon, beam={"beam_width": 4}
        )
        assert with_lm.lm["format"] == "arpa" and with_lm.lexicon["words"] == 3 and with_lm.beam == {"beam_width": 4}
        assert alice.get_adapter("sdk-lm").lm == with_lm.lm
        assert alice.transcribe(audio["one"], "sdk-lm", decoder="greedy").adapter == "alice/sdk-lm@1"
        plain = alice.upload_adapter(adapter_file(model_dir), "sdk-plain")
        assert plain.lm is None and plain.lexicon is None
        with pytest.raises(InvalidRequestError) as refused:
            alice.transcribe(audio["one"], "sdk-plain", decoder="beam")
        assert (refused.value.code, refused.value.param) == ("beam_unavailable", "decoder")
        with pytest.raises(ValueError, match="decoder must be"):
            alice.transcribe(audio["one"], "sdk-plain", decoder="viterbi")
        with pytest.raises(ValueError, match="need a language model or lexicon"):
            alice.upload_adapter(adapter_file(model_dir), "sdk-x", beam={"lm_weight": 1.0})
        bad = tmp_path / "bad.txt"
        bad.write_bytes(b"\xff\n")
        with pytest.raises(InvalidRequestError) as invalid:
            alice.upload_adapter(adapter_file(model_dir), "sdk-bad", lexicon=bad)
        assert invalid.value.code == "invalid_adapter" and "not UTF-8" in str(invalid.value)

    env = {"CHORUS_URL": server, "CHORUS_API_KEY": "k-alice"}
    up = chorus("adapters", "upload", str(adapter_file(model_dir)), "--id", "cli-lm", "--lm", str(arpa),
                "--lexicon", str(lexicon), "--beam-width", "16", "--lm-weight", "0.9", env=env)  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "language model arpa, lexicon of 3 words" in up.stdout
    shown = json.loads(chorus("adapters", "show", "cli-lm", "--json", env=env).stdout)
    assert shown["beam"] == {"beam_width": 16, "lm_weight": 0.9}
    text = chorus("transcribe", str(audio["one"]), "-a", "cli-lm", "--decoder", "greedy", "--prompt", "x", env=env)
    assert text.returncode == 0, text.stderr
    bad = chorus(
        "adapters", "upload", str(adapter_file(model_dir)), "--id", "cli-bad-lm", "--lm", str(lexicon), env=env
    )
    assert bad.returncode == EXIT_REJECTED and "line 1: expected the \\data\\ header" in bad.stderr
