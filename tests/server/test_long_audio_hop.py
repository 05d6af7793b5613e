"""Long audio is windowed on the backbone's own frame hop (`inputs_to_logits_ratio`), not a hard-coded 320
samples: on a front end with a 640-sample hop, the server's transcript is exactly the 640-aligned windows'
logits stitched, with every timestamp in place."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import soundfile

from chorus_server.chunking import plan_windows, stitch
from chorus_server.engine import Engine, ctc_greedy_decode, load_adapter, pad_batch, random_model
from tests.server.conftest import encode, make_settings, running_app, tone, transcribe


def test_windows_follow_the_engine_hop(tmp_path, monkeypatch):
    wide = dataclasses.replace(
        random_model.PRESETS["tiny"], conv_stride=(5, 2, 2, 2, 2, 2, 4), conv_kernel=(10, 3, 3, 3, 3, 2, 4)
    )
    monkeypatch.setitem(random_model.PRESETS, "tiny-640", wide)
    (adapter_file,) = random_model.write_random_model(tmp_path / "model", "tiny-640", num_adapters=1, seed=5)
    engine = Engine.from_pretrained(tmp_path / "model", device="cpu").engine
    assert engine.config.inputs_to_logits_ratio == 640
    adapter = engine.prepare(load_adapter(adapter_file))

    audio = np.concatenate([tone(5.0, seed=s) for s in (1, 2, 3)])  # 15 s through 4 s windows
    decoded = soundfile.read(io.BytesIO(encode(audio)), dtype="float32")[0]
    windows = plan_windows(len(decoded), 4 * 16000, 16000 // 2, 640)
    assert all(w.start % 640 == 0 for w in windows) and len(windows) > 3
    pieces = [engine.forward(*pad_batch([decoded[w.start : w.stop]]), [adapter])[0] for w in windows]
    expected = ctc_greedy_decode(stitch(pieces, windows), adapter.vocab, engine.frame_seconds)

    settings = make_settings(tmp_path, tmp_path / "model", batch={"chunk_seconds": 4.0, "stride_seconds": 0.5})
    with running_app(settings, [adapter_file]) as client:
        fields = {"response_format": "verbose_json", "timestamp_granularities[]": "word"}
        body = transcribe(client, encode(audio), adapter_file.stem, **fields).json()
    assert body["text"] == expected.text
    assert [(w["start"], w["end"]) for w in body["words"]] == [
        (round(w.start, 3), round(w.end, 3)) for w in expected.words
    ]
