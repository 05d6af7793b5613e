"""Adapter uploads on CUDA, simulated on the CPU: the host tier is pinned, every loader thread copies on its own
stream with non-blocking copies and waits for that stream before the adapter is handed out."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from chorus_server.engine import Adapter, AdapterInfo, Vocabulary
from chorus_server.engine.upload import AdapterUploader

VOCAB = Vocabulary(("<pad>", "|", "a", "b"), blank_id=0, word_delimiter_id=1)


def make_adapter() -> Adapter:
    return Adapter(AdapterInfo(name="fr", kind="houlsby"), VOCAB, 8, bottleneck_dim=2, layers=(0, 1)).eval()


class FakeStream:
    def __init__(self, events: list[tuple[str, object]]):
        self.events = events

    def synchronize(self) -> None:
        self.events.append(("synchronize", self))


class FakeEngine:
    """Records the stream current while `prepare` runs and whether it was asked for non-blocking copies."""

    def __init__(self, device: str, events: list[tuple[str, object]]):
        self.device = torch.device(device)
        self.events = events
        self.current: FakeStream | None = None

    def prepare(self, adapter: Adapter, check_fingerprint: bool = True, non_blocking: bool = False) -> Adapter:
        self.events.append(("prepare", (self.current, non_blocking, threading.current_thread().name)))
        return adapter


@pytest.fixture
def fake_cuda(monkeypatch):
    events: list[tuple[str, object]] = []
    engine = FakeEngine("cuda:0", events)

    @contextlib.contextmanager
    def use(stream):
        engine.current = stream
        try:
            yield
        finally:
            engine.current = None

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream(events))
    monkeypatch.setattr(torch.cuda, "stream", use)
    monkeypatch.setattr(
        torch.cuda,
        "set_device",
        lambda device: events.append(("set_device", (threading.current_thread().name, torch.device(device)))),
    )
    return engine, events


def test_the_host_tier_is_pinned_on_cuda(monkeypatch, fake_cuda):
    engine, _ = fake_cuda
    pinned: list[torch.Tensor] = []

    def pin_memory(tensor: torch.Tensor) -> torch.Tensor:
        copy = tensor.clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    adapter = make_adapter()
    host = AdapterUploader(engine).pin(adapter)  # type: ignore[arg-type]
    stored = {t.data_ptr() for t in host.parameters()}
    assert stored and stored <= {t.data_ptr() for t in pinned}
    # The per-layer views are rebuilt over the pinned stacks, so nothing still reads the pageable copy.
    torch.testing.assert_close(
        host.tensors()["layers.1.attn.down.weight"], adapter.tensors()["layers.1.attn.down.weight"]
    )


def test_each_loader_thread_copies_on_its_own_stream_and_waits_for_it(fake_cuda):
    engine, events = fake_cuda
    uploader = AdapterUploader(engine)  # type: ignore[arg-type]
    barrier = threading.Barrier(2)

    def load(_: int) -> None:
        barrier.wait(10)  # both threads at once: two loader threads, two streams
        uploader(make_adapter())
        uploader(make_adapter())

    with ThreadPoolExecutor(2, thread_name_prefix="loader") as pool:
        list(pool.map(load, range(2)))
    prepares = [value for kind, value in events if kind == "prepare"]
    syncs = [value for kind, value in events if kind == "synchronize"]
    assert len(prepares) == 4 and len(syncs) == 4
    for stream, non_blocking, _thread in prepares:
        assert isinstance(stream, FakeStream) and non_blocking  # never the default stream, never blocking
    by_thread: dict[str, set[int]] = {}
    for stream, _, thread in prepares:
        by_thread.setdefault(thread, set()).add(id(stream))
    assert len(by_thread) == 2 and all(len(streams) == 1 for streams in by_thread.values())
    assert len({id(s) for s, _, _ in prepares}) == 2
    # Every copy is followed by a wait on the stream it ran on, before the adapter is returned.
    for index, (kind, value) in enumerate(events):
        if kind == "prepare":
            stream = value[0]  # type: ignore[index]
            assert ("synchronize", stream) in events[index + 1 :]


def test_on_a_cpu_upload_is_plain_prepare():
    events: list[tuple[str, object]] = []
    engine = FakeEngine("cpu", events)
    uploader = AdapterUploader(engine)  # type: ignore[arg-type]
    adapter = make_adapter()
    assert uploader.pin(adapter) is adapter
    assert uploader(adapter) is adapter
    assert events == [("prepare", (None, False, threading.current_thread().name))]


def test_loader_threads_make_the_engines_gpu_current(monkeypatch, fake_cuda):
    """A server on cuda:1: its loader threads pin and copy with cuda:1 current (CUDA's current device is per thread
    and starts at 0; before, pinned host memory and the copy set-up landed on GPU 0)."""
    _, events = fake_cuda
    engine = FakeEngine("cuda:1", events)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: tensor.clone())
    uploader = AdapterUploader(engine)  # type: ignore[arg-type]
    with ThreadPoolExecutor(1, thread_name_prefix="loader") as pool:
        pool.submit(lambda: uploader(uploader.pin(make_adapter()))).result(10)
    calls = [value for kind, value in events if kind == "set_device"]
    assert len(calls) >= 2 and {device for _, device in calls} == {torch.device("cuda", 1)}
    assert all(thread.startswith("loader") for thread, _ in calls)


def test_the_host_tier_counts_pinned_blocks_as_the_allocator_rounds_them(monkeypatch, fake_cuda):
    engine, _ = fake_cuda
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: tensor.clone())
    uploader = AdapterUploader(engine)  # type: ignore[arg-type]
    odd = Adapter(AdapterInfo(name="fr", kind="houlsby"), VOCAB, 12, bottleneck_dim=3, layers=(0, 1, 2)).eval()
    host = uploader.pin(odd)  # tensors of 3·12·3·4 bytes and the like: not powers of two
    sizes = [t.untyped_storage().nbytes() for t in host.parameters() if t.numel()]
    assert uploader.host_bytes(host) == sum(1 << (n - 1).bit_length() for n in sizes) > host.nbytes()
    assert AdapterUploader(FakeEngine("cpu", [])).host_bytes(host) == host.nbytes()  # type: ignore[arg-type]
