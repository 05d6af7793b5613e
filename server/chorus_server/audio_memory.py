"""A bound on the decoded audio requests hold in memory, in bytes: from the start of decoding (sized from the
file's header, before a sample is decoded) until the request's last reference to its samples is gone (the windows
queued for the inference thread are views of them). The bound is hard: past it requests get 503 + Retry-After.
An upload larger than the whole bound is decoded only while no other decoded audio is held, so a long file is
slow to get in, never refused for good.

Decoded audio and parsed uploads are large and short-lived, and glibc keeps freed heap pages in its arenas: once
no decoded audio is held and at least TRIM_AFTER_BYTES of audio and uploads went through since the last time,
`malloc_trim(0)` hands them back to the system (on a background thread, off the inference path)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping

import numpy as np

from chorus_server.queue_budget import QueueFull

logger = logging.getLogger(__name__)

TRIM_AFTER_BYTES = 64 * 1024 * 1024  # small requests come and go without a trim each


class Hold:
    """Bytes reserved for one request's audio; `keep(samples)` narrows it to what the decoded array holds and
    releases it when the array is freed; `release()` gives it all back (decoding failed)."""

    def __init__(self, memory: AudioMemory, tenant: str, nbytes: int):
        self._memory, self._tenant, self._nbytes = memory, tenant, nbytes
        self._lock = threading.Lock()

    def keep(self, samples: np.ndarray) -> None:
        kept = min(self._nbytes, samples.nbytes)
        with self._lock:
            self._memory._release(self._tenant, self._nbytes - kept)
            self._nbytes = kept
        # Released when the request is done with the audio (`AudioMemory.done`), or at the latest when the array
        # that owns the memory is freed (views, e.g. queued windows, keep it alive), whatever path the request took.
        self._memory._holds[id(samples)] = self
        owner = samples if samples.base is None else samples.base
        try:
            weakref.finalize(owner, self._memory._forget, id(samples), self)
        except TypeError:  # an owner that takes no weak reference (bytes): the array itself
            weakref.finalize(samples, self._memory._forget, id(samples), self)

    def release(self) -> None:
        with self._lock:
            nbytes, self._nbytes = self._nbytes, 0
        self._memory._release(self._tenant, nbytes)


class AudioMemory:
    def __init__(self, bound_bytes: int, trim: Callable[[], None] | None = None):
        self.bound = bound_bytes
        self._held: dict[str, int] = {}  # tenant -> bytes
        self._lock = threading.Lock()
        self._trim = trim if trim is not None else _malloc_trim
        self.peak = 0  # the most bytes held at once (tests and benchmarks read it)
        self._freed = 0  # bytes of audio and uploads gone through since the last trim
        self._holds: dict[int, Hold] = {}  # id(decoded samples) -> their hold, until released

    def done(self, samples: np.ndarray) -> None:
        """The request that decoded `samples` has finished: what they hold counts no more."""
        hold = self._holds.get(id(samples))
        if hold is not None:
            self._forget(id(samples), hold)

    def _forget(self, key: int, hold: Hold) -> None:
        if self._holds.get(key) is hold:
            del self._holds[key]
        hold.release()

    @property
    def held(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def reserve(self, tenant: str, nbytes: int) -> Hold:
        """Reserve `nbytes` for `tenant`'s decoding or raise `QueueFull` (with the bytes held now)."""
        with self._lock:
            held = self._refused(nbytes)
            if held is not None:
                raise QueueFull(held)
            self._held[tenant] = self._held.get(tenant, 0) + nbytes
            self.peak = max(self.peak, sum(self._held.values()))
        return Hold(self, tenant, nbytes)

    def refusal(self, tenant: str, nbytes: int) -> float | None:
        """The bytes held if `nbytes` more would be refused now (None: admitted)."""
        with self._lock:
            return self._refused(nbytes)

    def _refused(self, nbytes: int) -> float | None:
        """A hard bound (unlike the queued seconds, which a tenant under its share may pass): memory is not
        elastic. Past it only an upload larger than the whole bound is admitted, and only alone."""
        held = sum(self._held.values())
        if held + nbytes <= self.bound or held == 0:
            return None
        return float(held)

    def upload_done(self, nbytes: int) -> None:
        """An upload of `nbytes` was parsed (decoded or refused): its buffers churned the heap as much as audio."""
        self._release("", 0, churned=nbytes)

    def _release(self, tenant: str, nbytes: int, churned: int = 0) -> None:
        if nbytes <= 0 and churned <= 0:
            return
        with self._lock:
            if nbytes > 0:
                left = self._held.get(tenant, 0) - nbytes
                if left > 0:
                    self._held[tenant] = left
                else:
                    self._held.pop(tenant, None)
            self._freed += max(nbytes, 0) + churned
            trim = not self._held and self._freed >= TRIM_AFTER_BYTES
            if trim:
                self._freed = 0
        if trim:
            threading.Thread(target=self._trim, name="chorus-malloc-trim", daemon=True).start()


_libc: ctypes.CDLL | None = None
_trim_lock = threading.Lock()


def _malloc_trim() -> None:
    """Return glibc's free heap pages to the system (a no-op where there is no glibc)."""
    global _libc
    if not _trim_lock.acquire(blocking=False):  # one trim at a time is enough
        return
    try:
        if _libc is None:
            name = ctypes.util.find_library("c")
            _libc = ctypes.CDLL(name) if name else None
        if _libc is not None and hasattr(_libc, "malloc_trim"):
            _libc.malloc_trim(0)
    except OSError as exc:
        logger.debug("malloc_trim unavailable: %s", exc)
    finally:
        _trim_lock.release()


M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
SERVER_ARENAS = 2


def limit_malloc_arenas(environ: Mapping[str, str] = os.environ) -> int | None:
    """Cap glibc's malloc arenas for a server process (call at start, before threads allocate); returns the cap.

    glibc gives each thread that allocates under contention an arena of its own (up to 8 per core), and freed
    memory stays in the arena that served it. A burst of uploads runs their multipart parsing and spooling on many
    request threads, so the heap they churned stayed resident afterwards: 64 parallel 14 MB uploads left a server
    at 849 MiB (1,301 MiB peak); with two arenas, 423 MiB (508 MiB peak). Tensors are large allocations, served by
    mmap outside the arenas, so the inference thread does not contend for them. An operator's MALLOC_ARENA_MAX
    wins; None where there is no glibc."""
    if "MALLOC_ARENA_MAX" in environ:
        return None
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "mallopt") or not libc.mallopt(M_ARENA_MAX, SERVER_ARENAS):
            return None
    except OSError:
        return None
    return SERVER_ARENAS
