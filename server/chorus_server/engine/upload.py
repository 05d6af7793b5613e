"""Adapters into device memory without getting in the way of batches.

On CUDA the host tier holds adapters in pinned memory, and each loader thread copies to the device on its own
CUDA stream with non-blocking copies, then waits for that stream only. A cold load therefore neither queues
behind the batches on the inference stream nor makes them wait, and the adapter is complete on the device before
any batch can use it. On a CPU both steps are the plain `engine.prepare`.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from chorus_server.engine.adapters import Adapter
from chorus_server.engine.device import use_device
from chorus_server.engine.engine import Engine


class AdapterUploader:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.on_gpu = engine.device.type == "cuda"
        self._local = threading.local()  # one copy stream per loader thread

    def pin(self, adapter: Adapter) -> Adapter:
        """The host-tier copy: page-locked on CUDA (so copies from it are asynchronous DMA), as is on a CPU."""
        if not self.on_gpu:
            return adapter
        use_device(self.engine.device)  # loader threads: pinned memory registers with this GPU's context
        return adapter._apply(lambda t: t.pin_memory())

    def host_bytes(self, adapter: Adapter) -> int:
        """Host memory `adapter`'s host-tier copy holds. On CUDA each pinned tensor is a block of torch's caching
        host allocator, which rounds every allocation up to a power of two: up to twice the tensors' bytes, and
        what the host budget has to count."""
        if not self.on_gpu:
            return adapter.nbytes()
        return pinned_bytes(adapter)

    def __call__(self, host: Adapter) -> Adapter:
        """Check `host` against the backbone and copy it to the device (the cache's `prepare`)."""
        if not self.on_gpu:
            return self.engine.prepare(host, check_fingerprint=False)
        use_device(self.engine.device)
        stream = self._stream()
        with torch.cuda.stream(stream):
            device = self.engine.prepare(host, check_fingerprint=False, non_blocking=True)
        stream.synchronize()  # complete on the device before the cache hands it to a batch
        return device

    def _stream(self) -> Any:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.engine.device)
        return stream


def pinned_bytes(adapter: Adapter) -> int:
    """Bytes of the pinned blocks holding `adapter`'s tensors: each storage's size rounded up to a power of two."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in adapter.parameters()}
    return sum(1 << (n - 1).bit_length() for n in storages.values() if n)
