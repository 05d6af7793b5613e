"""Zero-copy parsing of a safetensors buffer: tensors are views of one writable buffer, not copies.

The adapter loader copies each tensor exactly once anyway (into its per-site stacks), so a parser that copies
every tensor first (as `safetensors.torch.load` does) doubles the memory traffic of a cold load.
Every offset is bound-checked before a view is made; a bad buffer raises `AdapterError` naming `source`.
"""

from __future__ import annotations

import json
import math

import torch

from chorus_server.engine.errors import AdapterError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


def _view(buffer: bytearray, start: int, spec: object, data_len: int) -> torch.Tensor:
    """One header entry -> a tensor viewing `buffer`, after checking dtype, shape and offsets."""
    if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES:
        raise ValueError(f"unsupported or missing dtype in {spec!r}")
    dtype, shape, offsets = DTYPES[spec["dtype"]], spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise ValueError(f"invalid data_offsets {offsets!r}")
    begin, end = offsets
    count = math.prod(shape)
    if not 0 <= begin <= end <= data_len or end - begin != count * dtype.itemsize:
        raise ValueError(f"data_offsets {offsets} do not fit dtype {spec['dtype']} shape {shape} in {data_len} bytes")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype, count=count, offset=start + begin).view(shape)


def parse_safetensors(data: bytes | bytearray, source: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Bytes of a safetensors file -> (`__metadata__`, tensors viewing one buffer); `source` names it in errors.

    `bytes` are copied once into a writable buffer (torch views need one); a `bytearray` is used as it is.
    """
    buffer = data if isinstance(data, bytearray) else bytearray(data)
    try:
        if len(buffer) < 8:
            raise ValueError("shorter than the 8-byte header length")
        header_len = int.from_bytes(buffer[:8], "little")
        if header_len > min(MAX_HEADER_BYTES, len(buffer) - 8):
            raise ValueError(f"header claims {header_len} bytes in a {len(buffer)}-byte file")
        header = json.loads(buffer[8 : 8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("__metadata__ must map strings to strings")
        start, data_len = 8 + header_len, len(buffer) - 8 - header_len
        tensors = {name: _view(buffer, start, spec, data_len) for name, spec in header.items()}
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise AdapterError(f"cannot read {source}: {exc}") from exc
    return meta, tensors
