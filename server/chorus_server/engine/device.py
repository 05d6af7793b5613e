"""Which device and dtype the engine runs on, named one canonical way.

`torch.device("cuda") != torch.device("cuda", 0)`, yet every tensor on the first GPU reports `cuda:0`; a device
compared without its index rejects every tensor that is on it. So every device Chorus keeps carries an explicit
index (`cuda` -> `cuda:<current>`), and device checks compare canonical devices.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
DTYPES |= {"float16": torch.float16, "fp16": torch.float16}


def canonical_device(device: str | torch.device) -> torch.device:
    """A device with an explicit index on CUDA (`cuda` -> `cuda:0` or the current device); CPU stays `cpu`.

    MPS is refused: the base models' folded GroupNorm needs float64, which MPS lacks."""
    device = torch.device(device)
    if device.type == "mps":
        raise ValueError("device 'mps' is not supported (no float64 for the GroupNorm fold); use 'cpu' or 'cuda'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(device)!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and device.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return torch.device("cuda", index)
    return device


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto`: the current CUDA device when there is one, else the CPU. `cuda:N` must exist."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = canonical_device(name)
    if device.type == "cuda" and torch.cuda.is_available() and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} GPUs")
    return device


def same_device(a: torch.device, b: torch.device) -> bool:
    """Device equality that treats `cuda` and `cuda:<current>` as one device."""
    return canonical_device(a) == canonical_device(b)


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def choose_dtype(name: str, device: torch.device) -> str:
    """`auto`: bfloat16 where the hardware runs it natively, float16 on older GPUs, float32 on other CPUs.

    On CUDA the compute capability of `device` decides (bf16 from sm80, Ampere): `torch.cuda.is_bf16_supported()`
    also counts emulated bf16, which on a T4 or V100 falls off the fused attention kernels onto the math path."""
    if name != "auto":
        return name
    if device.type == "cuda":
        major, _minor = torch.cuda.get_device_capability(device)
        return "bfloat16" if major >= 8 else "float16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    return "float32"


def configure_matmul(device: torch.device) -> None:
    """On CUDA, float32 matmuls and convs may use TF32 (sm80+): a float32 server then runs at tensor-core speed
    at about bf16's rounding in the products, float32 accumulation. No effect on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor copied to `device` without a host-device sync (via pinned memory on CUDA)."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def use_device(device: torch.device) -> None:
    """Make `device` the calling thread's current CUDA device; no-op on a CPU.

    CUDA's current device is per host thread and starts as device 0. Kernels follow their tensors' device, but
    whatever allocates without a tensor to follow (pinned host memory, events, lazy context and cuBLAS set-up)
    lands on the current device: a server on `cuda:1` would build a context on GPU 0 (hundreds of MB, on another
    server's GPU) from every thread that pins or stages. So every thread that touches the engine's device calls
    this first (`Engine.stage` / `Engine.run`, the adapter uploader); it is cheap when already current."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
