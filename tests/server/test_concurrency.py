"""Many tenants at once: mixed-adapter batches give every request its solo answer; long audio is windowed."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile

from chorus_server.chunking import plan_windows, stitch
from chorus_server.engine import Engine, ctc_greedy_decode, load_adapter, pad_batch
from tests.server.conftest import encode, make_settings, running_app, tone, transcribe


def test_concurrent_mixed_adapters_each_get_their_solo_transcript(tmp_path, model_dir, adapter_files):
    names = [p.stem for p in adapter_files] + ["default"]
    jobs = [(names[i % len(names)], tone(0.5 + (i * 0.37) % 3.0, seed=i)) for i in range(24)]
    # Solo answers first, one request at a time (a batch of one each).
    solo_settings = make_settings(tmp_path / "solo", model_dir, batch={"max_items": 1})
    with running_app(solo_settings, adapter_files) as client:
        solo = [transcribe(client, encode(audio), name, response_format="verbose_json").json() for name, audio in jobs]
    settings = make_settings(tmp_path / "mixed", model_dir, batch={"max_items": 8, "max_wait_ms": 50})
    with running_app(settings, adapter_files) as client:
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(transcribe, client, encode(a), n, response_format="verbose_json") for n, a in jobs]
            mixed = [f.result().json() for f in futures]
        metrics = client.get("/metrics").text
    # Batched logits match solo ones to ~1e-6, so the text must match wherever no frame is a near-tie between
    # its two best tokens (random tiny models have a few such frames; 1e-6 of noise may flip those).
    margins = _argmax_margins(model_dir, adapter_files, jobs)
    assert sum(m >= 1e-4 for m in margins) >= len(jobs) - 2
    for m, s, margin in zip(mixed, solo, margins, strict=True):
        if margin < 1e-4:
            continue
        assert m["text"] == s["text"]
        for ms, ss in zip(m["segments"], s["segments"], strict=True):
            assert abs(ms["avg_logprob"] - ss["avg_logprob"]) < 1e-4
    batches = float(metrics.split("chorus_batch_size_count ")[1].split()[0])
    assert batches < len(jobs), "requests were batched together"


def _argmax_margins(model_dir, adapter_files, jobs) -> list[float]:
    """Smallest gap between the best and second-best logit over each job's frames (engine, solo)."""
    loaded = Engine.from_pretrained(model_dir, device="cpu")
    engine = loaded.engine
    adapters = {p.stem: engine.prepare(load_adapter(p)) for p in adapter_files} | {"default": loaded.default_adapter}
    margins = []
    for name, audio in jobs:
        decoded = soundfile.read(io.BytesIO(encode(audio)), dtype="float32")[0]  # what the server sees (PCM16)
        logits = engine.forward(*pad_batch([decoded]), [adapters[name]])[0]
        top = logits.topk(2, dim=-1).values
        margins.append(float((top[:, 0] - top[:, 1]).min()))
    return margins


def test_long_audio_is_windowed_and_stitched(tmp_path, model_dir, adapter_files):
    """90 s through 10 s windows with 2 s strides: the server's transcript is exactly the windows' logits stitched
    and decoded once, timestamps run monotonically over the whole file, and the text stays close to a single
    pass over all 90 s (a random model is very context-sensitive, hence the loose bound)."""
    audio = np.concatenate([tone(30.0, seed=s) for s in (1, 2, 3)])
    decoded = soundfile.read(io.BytesIO(encode(audio)), dtype="float32")[0]
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    adapter = engine.prepare(load_adapter(adapter_files[1]))
    windows = plan_windows(len(decoded), 10 * 16000, 2 * 16000, 320)
    pieces = [engine.forward(*pad_batch([decoded[w.start : w.stop]]), [adapter])[0] for w in windows]
    expected = ctc_greedy_decode(stitch(pieces, windows), adapter.vocab, engine.frame_seconds)
    whole = engine.transcribe([decoded], [adapter])[0]

    settings = make_settings(tmp_path, model_dir, batch={"chunk_seconds": 10.0, "stride_seconds": 2.0})
    with running_app(settings, adapter_files) as client:
        fields = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
        body = transcribe(client, encode(audio), adapter_files[1].stem, **fields).json()
        metrics = client.get("/metrics").text
    assert body["duration"] == 90.0
    assert float(metrics.split("chorus_batch_audio_seconds_sum ")[1].split()[0]) > 90.0  # windows overlap
    assert body["text"] == expected.text
    assert [(w["start"], w["end"]) for w in body["words"]] == [
        (round(w.start, 3), round(w.end, 3)) for w in expected.words
    ]
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts) and starts[-1] > 80.0 and body["words"][-1]["end"] <= 90.0
    assert _char_error_rate(body["text"], whole.text) < 0.25


def _char_error_rate(hypothesis: str, reference: str) -> float:
    previous = list(range(len(reference) + 1))
    for i, h in enumerate(hypothesis, 1):
        current = [i]
        for j, r in enumerate(reference, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
        previous = current
    return previous[-1] / max(1, len(reference))


def test_loading_an_adapter_leaves_inference_all_its_threads(tmp_path, model_dir, adapter_files):
    """torch.set_num_threads is process-wide: a loader thread setting it once slowed every forward 1.7x. Every
    forward runs with the threads the process had before the server started, cold loads or not (the server makes
    other threads serial, and gives the inference thread its cores back for itself alone: engine/threads.py)."""
    import torch

    from tests.server.conftest import make_settings, running_app, transcribe, wav

    threads, seen = torch.get_num_threads(), []
    with running_app(make_settings(tmp_path, model_dir), adapter_files[:2]) as client:
        engine = client.app.state.chorus.engine
        forward = engine.forward

        def counted(*args, **kwargs):  # runs on the inference thread
            seen.append(torch.get_num_threads())
            return forward(*args, **kwargs)

        engine.forward = counted
        for path in adapter_files[:2]:  # cold loads on the loader threads
            assert transcribe(client, wav(1.0), path.stem).status_code == 200
    assert seen and set(seen) == {threads}


def test_a_lone_request_does_not_wait_for_company(tmp_path, model_dir, adapter_files):
    """`max_wait_ms` holds a batch open only while other requests are in flight: with nobody else on the way,
    the windows already queued run at once (here `max_wait_ms` would hold them 5 s)."""
    settings = make_settings(tmp_path, model_dir, batch={"max_items": 8, "max_wait_ms": 5000})
    with running_app(settings, adapter_files) as client:
        assert transcribe(client, encode(tone(1.0)), adapter_files[0].stem).status_code == 200
        metrics = client.get("/metrics").text
    assert float(metrics.split("chorus_queue_wait_seconds_count ")[1].split()[0]) == 1
    assert float(metrics.split("chorus_queue_wait_seconds_sum ")[1].split()[0]) < 1.0
