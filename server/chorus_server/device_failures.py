"""How the inference thread reacts to the device failing: which errors are out-of-memory, which are sticky, and how
large a batch the device can hold now.

A CUDA out-of-memory error leaves the context usable: the batch is split and retried, and the batch budget
shrinks (`AdaptiveBudget`), then grows back slowly over clean batches. So do the allocation failures that reach
Python as a generic "CUDA error" rather than `OutOfMemoryError`: cuBLAS/cuDNN/cuFFT failing to allocate their
workspace or handle, and pinned host memory that `pin_memory()` / `cudaHostAlloc` cannot get ("CUDA error: out of
memory"). Most other CUDA errors (an illegal memory access, a device-side assert, an ECC error) are sticky: every
later call in the process fails too, so the worker marks itself broken and `/readyz` turns red for the
orchestrator to replace it.
"""

from __future__ import annotations

import dataclasses

import torch

from chorus_server.batching import BatchLimits

_STICKY_MARKERS = ("CUDA error", "illegal memory access", "device-side assert", "unspecified launch failure")
# Allocation failures that leave the context usable, as torch words them: `cudaErrorMemoryAllocation` from any
# CUDA call (pinned host memory included) and the libraries' own allocation statuses.
_ALLOCATION_MARKERS = (
    "CUDA error: out of memory",
    "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUFFT_ALLOC_FAILED",
)


def is_out_of_memory(error: BaseException) -> bool:
    """Device (or pinned host) memory ran out, and the context is still usable: smaller batches may run."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in _ALLOCATION_MARKERS)


def release_cached_memory(device: torch.device) -> None:
    """Hand the allocators' cached blocks back (device memory, and pinned host memory where torch can), so that
    the smaller batches after an out-of-memory error allocate unfragmented memory."""
    if device.type != "cuda":
        return
    torch.cuda.empty_cache()
    empty_host_cache = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)  # torch >= 2.9
    if empty_host_cache is not None:
        empty_host_cache()


def is_device_fault(error: BaseException) -> bool:
    """A sticky accelerator error: the process cannot use the device any more."""
    if is_out_of_memory(error):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8 raises this for CUDA errors
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in _STICKY_MARKERS)


class AdaptiveBudget:
    """The share of the configured batch limits the device is trusted with now.

    Every out-of-memory error halves it (never below one item); every `recover_after` clean batches in a row grow
    it by `growth` until it is whole again. Growing slowly keeps a server near its memory limit from failing every
    few batches while it finds the limit again."""

    def __init__(self, base: BatchLimits, recover_after: int = 50, growth: float = 1.25, floor: float = 1 / 64):
        self.base, self.recover_after, self.growth, self.floor = base, recover_after, growth, floor
        self.scale = 1.0
        self._clean = 0

    def shrink(self) -> None:
        self.scale = max(self.floor, self.scale / 2)
        self._clean = 0

    def succeeded(self) -> None:
        if self.scale >= 1.0:
            return
        self._clean += 1
        if self._clean >= self.recover_after:
            self.scale, self._clean = min(1.0, self.scale * self.growth), 0

    def limits(self) -> BatchLimits:
        """The base limits scaled down by the current share (at least one item; padded samples at least the
        longest single item the base allows, so any window can still run alone)."""
        if self.scale >= 1.0:
            return self.base
        base = self.base
        return dataclasses.replace(
            base,
            max_items=max(1, int(base.max_items * self.scale)),
            max_samples=max(1, int(base.max_samples * self.scale)),
            contended_max_samples=max(1, int(base.shared_samples * self.scale)),
        )
