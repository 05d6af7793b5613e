"""One thread computes on every core, the inference thread; every other thread of a server runs its torch ops serially.

libgomp (torch's OpenMP runtime on Linux) keeps a team of worker threads for every thread that ever opened a
parallel region. Once it manages more threads than the machine has CPUs, each idle OpenMP worker spins 100 rounds
instead of ~300,000 before it sleeps (libgomp's "throttled" spin count), and a forward opens ~500 parallel regions,
each of which then starts by waking a sleeping worker. With the engine built on one thread and run on another (two
teams on 2 CPUs) a `base` forward of a 10 s clip ran 1.09-1.20x slower than built and run on one thread
(docs/engine.md "Threads"). A server has many threads that touch torch (start-up, adapter loaders, request
handlers running the voice activity detector or stitching a long result), so instead of guarding each one:

- `serial_by_default()` (until `end_serial_default()`) makes one thread per process the norm
  (`torch.set_num_threads(1)`: every thread takes torch's process-wide count when it first runs a torch op);
- `use_cores(n)` gives the calling thread its cores back through the per-thread settings of OpenMP
  (`omp_set_num_threads` sets the calling thread's own value) and MKL (`mkl_set_num_threads_local`).

Both are no-ops where the per-thread setting cannot be reached (no OpenMP runtime found in the process); the
server then keeps torch's defaults.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

_OPENMP = re.compile(r"^lib(gomp|iomp5|omp)[-.]")  # libgomp.so.1, libgomp-<hash>.so.1, libiomp5.so, libomp.so


def _loaded_libraries() -> tuple[Path, ...]:
    """Shared objects mapped into this process (Linux: /proc/self/maps); empty elsewhere."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return ()
    fields = (line.split(maxsplit=5) for line in lines)  # address, perms, offset, device, inode, path
    paths = {f[5] for f in fields if len(f) == 6}
    return tuple(sorted(Path(p) for p in paths if p.startswith("/") and ".so" in p))


@cache
def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded (libgomp, or Intel's/LLVM's), if any."""
    torch.get_num_threads()  # makes sure torch's OpenMP runtime is loaded and initialised
    for path in _loaded_libraries():
        if _OPENMP.search(path.name):
            try:
                lib = ctypes.CDLL(str(path))
                lib.omp_set_num_threads.argtypes, lib.omp_set_num_threads.restype = [ctypes.c_int], None
                return lib
            except (OSError, AttributeError):
                continue
    return None


@cache
def _mkl_local() -> Callable[[int], None] | None:
    """MKL's per-thread thread count, where torch links MKL (x86 builds). The Fortran-style entry point
    (`mkl_set_num_threads_local_`, the count passed by reference) is the one whose calling convention is certain."""
    for path in _loaded_libraries():
        if path.name.startswith("libtorch_cpu"):
            try:
                setter = ctypes.CDLL(str(path)).mkl_set_num_threads_local_
            except (OSError, AttributeError):
                return None
            setter.argtypes, setter.restype = [ctypes.POINTER(ctypes.c_int)], ctypes.c_int
            return lambda threads: setter(ctypes.byref(ctypes.c_int(threads)))
    return None


def per_thread_control() -> bool:
    """Whether a thread's compute threads can be set for that thread alone."""
    return _openmp() is not None


_lock = threading.Lock()
_holders = 0  # callers of serial_by_default that have not called end_serial_default yet
_cores = 0  # torch's process-wide thread count before the first of them


def serial_by_default() -> int:
    """Threads run torch ops serially unless they call `use_cores`, until as many `end_serial_default` calls;
    returns torch's process-wide thread count from before (the cores to give the inference thread). Runtimes may
    overlap (a test's servers, an ingress beside a worker): the count from before the first one is kept. Without
    per-thread control nothing changes and the current count is returned."""
    global _holders, _cores
    with _lock:
        if _holders == 0:
            _cores = torch.get_num_threads()
            if per_thread_control():
                torch.set_num_threads(1)
        _holders += 1
        return _cores


def end_serial_default() -> None:
    """Undo one `serial_by_default`; the last one gives threads started later every core again."""
    global _holders
    with _lock:
        _holders -= 1
        if _holders == 0 and per_thread_control():
            torch.set_num_threads(_cores)


def use_cores(threads: int) -> None:
    """The calling thread's torch ops use `threads` threads, whatever the process-wide count is."""
    torch.get_num_threads()  # torch initialises a thread's count on its first op: let it do so before us
    openmp = _openmp()
    if openmp is None:
        return
    openmp.omp_set_num_threads(threads)
    mkl = _mkl_local()
    if mkl is not None:
        mkl(threads)
