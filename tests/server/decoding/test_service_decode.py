"""The transcriber decodes each region with the adapter version's language model and the request's choices
(`Transcriber._decode`, run on a worker thread by `_run`)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from chorus_server.chunking import Window
from chorus_server.decoding.options import DecodeRequest
from chorus_server.errors import ApiError
from chorus_server.service import Transcriber
from chorus_server.vad import Region
from tests.server.conftest import transcribe, wav
from tests.server.decoding.test_beam import VOCAB, files, frames, spoken  # noqa: F401 (a fixture)


def _decode(adapter: SimpleNamespace, request: DecodeRequest) -> str:
    logits = frames(spoken("helo world", close={3: ("l", 11.5)}))
    host = SimpleNamespace(rate=16000, engine=SimpleNamespace(frame_seconds=0.02))
    plans = [(Region(16000, 16000 + 320 * len(logits)), [Window(0, 320 * len(logits), 0, None)])]
    return Transcriber._decode(host, [logits], plans, adapter, request).text  # type: ignore[arg-type]


def test_the_adapters_language_model_decodes_and_greedy_stays_available(files) -> None:  # noqa: F811
    with_lm = SimpleNamespace(vocab=VOCAB, language_model=files)
    assert _decode(with_lm, DecodeRequest()) == "hello world"  # its default: beam
    assert _decode(with_lm, DecodeRequest("greedy")) == "helo world"
    without = SimpleNamespace(vocab=VOCAB)  # an adapter loaded without LM files
    assert _decode(without, DecodeRequest()) == "helo world"
    assert _decode(without, DecodeRequest("beam", ("Hello",))) == "Hello world"


def test_beam_by_name_without_the_library_is_a_clear_501(files, monkeypatch) -> None:  # noqa: F811
    from chorus_server.decoding import resources

    def missing() -> None:
        raise resources.DecoderUnavailable("beam decoding needs flashlight-text; install it with ...")

    monkeypatch.setattr(resources, "_flashlight", missing)
    monkeypatch.setattr("chorus_server.decoding.beam.LOADED", resources.LoadedCache())
    with pytest.raises(ApiError) as refused:
        _decode(SimpleNamespace(vocab=VOCAB, language_model=files), DecodeRequest("beam"))
    assert refused.value.status_code == 501 and "decoder=greedy" in refused.value.detail


def test_requests_decode_on_the_decode_pool_not_the_shared_default_executor(client, monkeypatch) -> None:
    """Audio decoding and voice detection of every tenant run on Python's default executor; a tenant's long beam
    searches there could hold all of its threads. Decodes run on the pool that takes tenants in turn."""
    threads: list[str] = []
    original = Transcriber._decode

    def recording(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Transcriber, "_decode", recording)
    assert transcribe(client, wav(1.0), "eng-0").status_code == 200
    assert len(threads) == 1 and threads[0].startswith("chorus-decode-"), threads
