"""Devices and dtypes on CUDA, simulated on a CPU-only machine: explicit device indices, `auto` dtype by compute
capability, TF32, MPS refused."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pydantic
import pytest
import torch

import chorus_server.engine.engine as engine_module
from chorus_server.engine import Engine, InputError, load_adapter, pad_batch
from chorus_server.engine.device import canonical_device, configure_matmul, resolve_device, same_device
from chorus_server.engine.staging import HostBuffers, StagedBatch
from chorus_server.runtime import choose_dtype
from chorus_server.settings import Settings

CPU = torch.device("cpu")


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this machine has two GPUs, the first one current."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("auto", "cuda:0"), ("cuda", "cuda:0"), ("cuda:0", "cuda:0"), ("cuda:1", "cuda:1"), ("cpu", "cpu")],
)
def test_devices_carry_an_explicit_index(two_gpus, name, expected):
    # Tensors on the first GPU report cuda:0, and torch.device("cuda") != torch.device("cuda:0").
    assert resolve_device(name) == torch.device(expected)


def test_auto_is_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_a_gpu_that_does_not_exist_is_refused(two_gpus):
    with pytest.raises(ValueError, match=r"cuda:2.*2 GPUs"):
        resolve_device("cuda:2")


def test_mps_is_refused_by_the_engine_and_by_settings():
    with pytest.raises(ValueError, match="mps"):
        resolve_device("mps")
    with pytest.raises(pydantic.ValidationError):
        Settings(device="mps", _env_file=None)
    assert Settings(device="cuda:1", _env_file=None).device == "cuda:1"


def test_same_device_ignores_a_missing_index(two_gpus):
    assert same_device(torch.device("cuda"), torch.device("cuda", 0))
    assert not same_device(torch.device("cuda"), torch.device("cuda", 1))
    assert canonical_device("cuda") == torch.device("cuda", 0)


def test_an_engine_on_cuda_accepts_adapters_on_cuda_0(two_gpus, random_model_dir):
    """The batch check compares the engine's device with the adapter weights' device (which report `cuda:0`);
    before devices were canonical, every batch failed this check and every transcription answered 422."""
    _, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu").engine
    engine.device = resolve_device("cuda")  # as the engine is built when told "cuda" (or "auto" on a GPU)
    weight = SimpleNamespace(device=torch.device("cuda", 0), dtype=engine.dtype)
    adapter = SimpleNamespace(name="fr", head=SimpleNamespace(weight=weight))
    engine._check_batch(torch.zeros(1, 800), torch.tensor([800]), [adapter])  # type: ignore[list-item]
    with pytest.raises(InputError):  # the check still runs
        engine._check_batch(torch.full((1, 800), float("nan")), torch.tensor([800]), [adapter])  # type: ignore[list-item]


@pytest.mark.parametrize(("capability", "expected"), [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16")])
def test_auto_dtype_follows_the_compute_capability_of_the_chosen_gpu(monkeypatch, capability, expected):
    asked: list[torch.device] = []

    def capability_of(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    # A T4 or V100 "supports" bf16 by emulation; that must not count.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_dtype("auto", torch.device("cuda", 1)) == expected
    assert asked == [torch.device("cuda", 1)]
    assert choose_dtype("float32", torch.device("cuda", 1)) == "float32"


@pytest.fixture
def tf32_restored():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_float32_on_cuda_uses_tf32(tf32_restored):
    configure_matmul(torch.device("cpu"))
    assert not torch.backends.cuda.matmul.allow_tf32
    configure_matmul(torch.device("cuda", 0))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@pytest.fixture
def set_device_calls(monkeypatch) -> list[tuple[str, torch.device]]:
    """torch.cuda.set_device, recorded per thread instead of done."""
    calls: list[tuple[str, torch.device]] = []
    monkeypatch.setattr(
        torch.cuda, "set_device", lambda device: calls.append((threading.current_thread().name, torch.device(device)))
    )
    return calls


def on_thread(name: str, work):
    """work() on a thread of that name -> its result, or the exception it raised."""
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(work())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join(30)
    return outcome[0]


def test_every_thread_that_stages_or_runs_a_batch_makes_the_engines_gpu_current(
    two_gpus, set_device_calls, random_model_dir, monkeypatch
):
    """CUDA's current device is per thread and starts at 0. Before, nothing called set_device, so a server on
    cuda:1 pinned, staged and set up lazily on GPU 0 from its stager and inference threads."""
    _, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu").engine
    adapter = engine.prepare(load_adapter(sorted((path / "adapters").glob("*.safetensors"))[0]))
    gpu = resolve_device("cuda:1")
    engine.device = gpu
    monkeypatch.setattr(engine_module, "same_device", lambda a, b: True)  # the CPU adapter stands in for cuda:1's
    waveforms, lengths = pad_batch([torch.randn(8000, generator=torch.Generator().manual_seed(0))])
    staged = on_thread("chorus-stager", lambda: engine.stage(waveforms, lengths, [adapter], HostBuffers(CPU)))
    assert isinstance(staged, StagedBatch)
    on_thread("chorus-inference", lambda: engine.run(staged))  # goes on to fail: this machine has no GPU
    assert ("chorus-stager", gpu) in set_device_calls and ("chorus-inference", gpu) in set_device_calls
    assert {device for _, device in set_device_calls} == {gpu}
