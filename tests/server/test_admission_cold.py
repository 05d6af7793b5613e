"""Admission counts every admitted request's audio, including requests still waiting for a cold adapter to load:
they used to be invisible to the queue bound (only audio submitted to the worker counted), so any number of them
passed it."""

from __future__ import annotations

import threading

from tests.server.conftest import make_settings, running_app, transcribe, wav
from tests.server.test_errors import error_of, in_background, wait_until


def test_requests_waiting_on_a_cold_adapter_count_against_the_queue(tmp_path, model_dir, adapter_files):
    settings = make_settings(tmp_path, model_dir, limits={"max_queue_audio_seconds": 5.0})
    with running_app(settings, adapter_files) as client:
        runtime = client.app.state.chorus
        gate, loading = threading.Event(), threading.Event()
        real_load = runtime.cache._load

        def slow_load(key):
            loading.set()
            gate.wait(30)
            return real_load(key)

        runtime.cache._load = slow_load  # the next cold adapter stays loading until the gate opens
        cold = adapter_files[2].stem
        waiting, waiting_out = in_background(transcribe, client, wav(3.0), cold)
        wait_until(loading.is_set)
        assert runtime.worker.queued_items == 0  # nothing reached the worker yet
        refused = transcribe(client, wav(3.0, seed=1), cold)
        error_of(refused, 503, "queue_full")  # 3 s waiting + 3 s > 5 s
        gate.set()
        waiting.join(30)
        assert waiting_out[0].status_code == 200
        assert transcribe(client, wav(3.0, seed=1), cold).status_code == 200  # released once finished
