"""A realtime session's `prompt` reaches the decoder of each turn's final transcript as hotwords, spelled in the
turn's adapter's vocabulary (as `prompt` on the HTTP API)."""

from __future__ import annotations

from chorus_server.decoding.options import DecodeRequest
from chorus_server.live.wsclient import open_session, pcm16, receive, send, until
from chorus_server.service import Transcriber
from tests.server.conftest import tone


def test_the_sessions_prompt_becomes_the_final_passs_hotwords(live, monkeypatch):
    requests: list[DecodeRequest | None] = []
    original = Transcriber._decode

    def spy(self, pieces, plans, adapter, request=None):
        requests.append(request)
        return original(self, pieces, plans, adapter, request)

    monkeypatch.setattr(Transcriber, "_decode", spy)
    transcription = {"model": "eng-0", "prompt": "NIX, inn dog"}  # eng-0 spells ' i n x à ç û ÿ
    audio_input = {"format": {"type": "audio/pcm", "rate": 16000}, "transcription": transcription}
    update = {"type": "transcription", "audio": {"input": {**audio_input, "turn_detection": None}}}
    with open_session(live.url) as ws:
        assert receive(ws)["type"] == "session.created"
        send(ws, {"type": "session.update", "session": update})
        assert receive(ws)["session"]["audio"]["input"]["transcription"]["prompt"] == "NIX, inn dog"
        samples = tone(1.0, seed=3)
        send(ws, {"type": "input_audio_buffer.append", "audio": pcm16(samples)})
        send(ws, {"type": "input_audio_buffer.commit"})
        until(ws, "conversation.item.input_audio_transcription.completed")
    assert requests[-1] == DecodeRequest(None, ("nix", "inn"), False)
