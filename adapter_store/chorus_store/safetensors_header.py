"""Bounded parsing of a safetensors header, before any tensor byte is read or allocated.

Layout: 8-byte little-endian header length N, N bytes of JSON, then the data buffer. Every tensor's
`data_offsets` must lie inside the data buffer, match `dtype` x `shape` exactly, and not overlap another.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

from chorus_store.errors import AdapterRejected

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = {"F32", "F16", "BF16"}
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_TENSORS = 10_000


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int


def read_header(f: BinaryIO, file_size: int) -> Header:
    """Parse and bound-check the header of an open safetensors file of `file_size` bytes."""
    prefix = f.read(8)
    if len(prefix) != 8:
        raise AdapterRejected("not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES or header_len > file_size - 8:
        raise AdapterRejected(f"safetensors header claims {header_len} bytes (file is {file_size} bytes)")
    try:
        raw = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterRejected(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterRejected("safetensors header is not a JSON object")
    metadata = raw.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterRejected("safetensors __metadata__ must map strings to strings")
    if len(raw) > MAX_TENSORS:
        raise AdapterRejected(f"safetensors file declares {len(raw)} tensors (limit {MAX_TENSORS})")
    data_len = file_size - 8 - header_len
    tensors = {name: _entry(name, spec, data_len) for name, spec in raw.items()}
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise AdapterRejected(f"tensors {name_a!r} and {name_b!r} overlap in the data buffer")
    return Header(metadata, tensors, 8 + header_len)


def _entry(name: str, spec: object, data_len: int) -> TensorEntry:
    if not isinstance(spec, dict):
        raise AdapterRejected(f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise AdapterRejected(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 2**40 for d in shape):
        raise AdapterRejected(f"tensor {name!r}: invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise AdapterRejected(f"tensor {name!r}: invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise AdapterRejected(f"tensor {name!r}: data_offsets {offsets} outside the {data_len}-byte data buffer")
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != expected:
        raise AdapterRejected(f"tensor {name!r}: {end - begin} bytes for dtype {dtype} shape {shape} ({expected})")
    return TensorEntry(name, dtype, tuple(shape), begin, end)
