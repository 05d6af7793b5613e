"""The Ray deployment options `cluster.app.build` makes, without starting Ray: GPUs per worker replica and the device
each part runs on, for a simulated cluster with and without GPUs."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray.serve")

from chorus_server.cluster.app import build, gpus_per_worker
from chorus_server.settings import ClusterSettings, Settings


def deployments(app: Any) -> dict[str, Any]:
    ingress = app._bound_deployment
    worker = ingress.init_args[0]._bound_deployment
    return {"ingress": ingress, "worker": worker}


def options(device: str = "auto", num_gpus: float | None = None, gpus_in_cluster: float = 0) -> dict[str, Any]:
    settings = Settings(device=device, cluster=ClusterSettings(num_gpus=num_gpus), _env_file=None)
    parts = deployments(build(settings, workers=2, gpus_in_cluster=gpus_in_cluster))
    worker, ingress = parts["worker"], parts["ingress"]
    return {
        "worker_gpus": worker.ray_actor_options.get("num_gpus", 0),
        "worker_device": worker.init_args[0]["device"],
        "ingress_gpus": ingress.ray_actor_options.get("num_gpus", 0),
        "ingress_device": ingress.func_or_class.settings.device,
        "replicas": worker.num_replicas,
    }


def test_on_a_gpu_cluster_each_worker_asks_for_one_gpu_and_runs_on_the_one_ray_assigns():
    assert options(gpus_in_cluster=8) == {
        "worker_gpus": 1.0,
        "worker_device": "auto",  # Ray makes the assigned GPU the worker's only visible one: auto = that GPU
        "ingress_gpus": 0,
        "ingress_device": "cpu",  # the ingress validates uploads only: it never takes a GPU
        "replicas": 2,
    }


def test_a_fraction_shares_a_gpu_and_zero_keeps_workers_on_the_cpu():
    assert options(num_gpus=0.5, gpus_in_cluster=1)["worker_gpus"] == 0.5
    cpu = options(gpus_in_cluster=0)
    assert (cpu["worker_gpus"], cpu["worker_device"]) == (0.0, "cpu")
    forced = options(num_gpus=0, gpus_in_cluster=8)  # GPUs present, but the operator asked for none
    assert (forced["worker_gpus"], forced["worker_device"]) == (0, "cpu")


def test_an_explicit_device_is_left_as_set():
    assert options(device="cuda:0", gpus_in_cluster=1)["worker_device"] == "cuda:0"


@pytest.mark.parametrize(
    ("setting", "in_cluster", "expected"), [(None, 0, 0), (None, 2, 1), (0.25, 0, 0.25), (2, 8, 2)]
)
def test_gpus_per_worker(setting, in_cluster, expected):
    assert gpus_per_worker(setting, in_cluster) == expected


def test_the_cli_flag_rejects_a_negative_count(capsys, tmp_path, monkeypatch):
    from chorus_server.cli import main

    monkeypatch.chdir(tmp_path)  # settings' relative data directory

    assert main(["serve", "--ray", "--gpus-per-worker", "-1"]) == 2
    assert "--gpus-per-worker must be 0 or more" in capsys.readouterr().err


def test_workers_compute_on_every_core_not_the_one_thread_ray_gives_a_zero_cpu_actor():
    import os

    def env(**cluster: Any) -> dict[str, str]:
        settings = Settings(cluster=ClusterSettings(**cluster), _env_file=None)
        worker = deployments(build(settings, workers=1, gpus_in_cluster=0))["worker"]
        return worker.ray_actor_options["runtime_env"]["env_vars"]

    assert env()["OMP_NUM_THREADS"] == str(os.cpu_count())  # one worker on this (unconnected: one-node) cluster
    assert env(worker_threads=3)["OMP_NUM_THREADS"] == "3"
    # User code and handle routers on the replica's own loop; no per-request access lines.
    worker = deployments(build(Settings(_env_file=None), workers=1, gpus_in_cluster=0))["worker"]
    assert env()["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert worker.logging_config["enable_access_log"] is False


def test_a_worker_counts_its_transcriptions_in_flight_so_its_batcher_waits_for_company():
    import asyncio

    from chorus_server.cluster.counting import counting
    from chorus_server.metrics import Metrics

    seen: list[int] = []

    class Worker:
        def __init__(self) -> None:
            from types import SimpleNamespace

            self.runtime = SimpleNamespace(metrics=Metrics(), worker=SimpleNamespace(company_expected=lambda: False))

        async def transcribe(self, adapter: str) -> str:
            seen.append(self.runtime.metrics.requests_in_flight())
            await asyncio.sleep(0)
            return adapter

    worker = counting(Worker)()

    async def two() -> list[str]:
        return await asyncio.gather(worker.transcribe("a"), worker.transcribe("b"))

    assert asyncio.run(two()) == ["a", "b"]
    assert seen == [1, 2] and worker.runtime.metrics.requests_in_flight() == 0
    # Concurrency seen a moment ago: the batcher expects company although nothing else is in flight now.
    assert worker.runtime.worker.company_expected() is True
    assert isinstance(worker, Worker)
    # The deployed worker class is the counting one.
    deployed = deployments(build(Settings(_env_file=None), workers=1, gpus_in_cluster=0))["worker"]
    assert deployed.func_or_class.transcribe.__wrapped__ is not None


def test_company_is_expected_while_others_are_in_flight_and_for_a_second_after_concurrency():
    from chorus_server.cluster.counting import CONCURRENT_SECONDS, Company

    now, in_flight = [100.0], [1]
    company = Company(lambda: in_flight[0], clock=lambda: now[0])
    company.arrived()
    assert company.expected() is False  # a lone sequential client never waits
    in_flight[0] = 2
    company.arrived()
    assert company.expected() is True
    in_flight[0] = 1
    now[0] += CONCURRENT_SECONDS / 2
    assert company.expected() is True
    now[0] += CONCURRENT_SECONDS
    assert company.expected() is False


@pytest.mark.parametrize(
    ("setting", "workers", "nodes", "cpus", "expected"),
    [
        (None, 1, 1, 16, 16),
        (None, 2, 1, 2, 1),
        (None, 4, 2, 16, 8),
        (None, 3, 2, 16, 8),
        (None, 8, 1, 4, 1),
        (6, 2, 1, 2, 6),
    ],
)
def test_worker_threads_share_a_node_between_its_workers(setting, workers, nodes, cpus, expected):
    from chorus_server.cluster.app import worker_threads

    assert worker_threads(setting, workers, nodes, cpus) == expected


def test_a_worker_computes_on_its_own_copy_of_audio_ray_hands_over_read_only():
    """A large array arrives as a read-only view of Ray's object store: the worker copies it (torch would warn on
    every tensor made from it, and an in-place write would hit read-only shared memory); its own arrays it uses
    as they are."""
    import warnings
    from types import SimpleNamespace

    import numpy as np
    import torch

    from chorus_server.cluster.worker import ChorusWorker, writable

    shared = np.arange(80_000, dtype=np.float32)
    shared.flags.writeable = False
    owned = writable(shared)
    assert owned.flags.writeable and owned is not shared and np.array_equal(owned, shared)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.as_tensor(owned).mul_(2)  # no "not writable" warning, and a write is allowed
    mine = np.zeros(16_000, dtype=np.float32)
    assert writable(mine) is mine
    worker = SimpleNamespace(runtime=SimpleNamespace(backbone=SimpleNamespace(sampling_rate=16000)))
    assert ChorusWorker._audio(worker, shared).samples.flags.writeable  # type: ignore[arg-type]
