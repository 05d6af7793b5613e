"""The one bounded safetensors parser (every adapter file, at publish and at load, goes through `parse_safetensors`)
and the writer beside it (`write_safetensors`, which lays out each stack of an adapter back to back).

Layout: 8-byte little-endian header length N, N bytes of JSON, then the data buffer. The header is bounded
(size, tensor count, shapes) before anything is allocated; every tensor's `data_offsets` must lie inside the data
buffer, match `dtype` x `shape` exactly, and not overlap another tensor's. Tensors are zero-copy views of one
writable buffer, and a run of equal tensors stored back to back is stacked as one view (`TensorViews.stack`): a float32
adapter written by Chorus loads without copying its weights at all, where `safetensors.torch.load` copies every
tensor first. Pickles and
other formats fail here. A bad buffer raises `AdapterError` naming `source`.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

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
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 4 * 1024 * 1024  # an adapter's header (names, shapes, vocabulary) is a few KB to a few 100 KB
MAX_TENSORS = 10_000
MAX_DIM = 2**40
MAX_RANK = 8  # adapter tensors have 1-3 dimensions; a bound keeps shape arithmetic cheap


def _span(name: str, spec: object, data_len: int) -> tuple[torch.dtype, list[int], int, int]:
    """One header entry -> (dtype, shape, begin, end), after checking dtype, shape and offsets (one pass over the
    shape: a cold load parses hundreds of entries)."""
    if type(spec) is not dict:
        raise ValueError(f"tensor {name!r}: header entry is not an object")
    dtype_name, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    dtype = DTYPES.get(dtype_name) if type(dtype_name) is str else None
    if dtype is None:
        raise ValueError(f"tensor {name!r}: unsupported dtype {str(dtype_name)[:40]!r}")
    if type(shape) is not list or len(shape) > MAX_RANK:
        raise ValueError(f"tensor {name!r}: invalid shape {str(shape)[:80]}")
    count, bound = 1, 1  # bound: the product with empty dimensions as 1; torch cannot describe one >= MAX_DIM
    for d in shape:
        if type(d) is not int or not 0 <= d < MAX_DIM:
            raise ValueError(f"tensor {name!r}: invalid shape {str(shape)[:80]}")
        count, bound = count * d, bound * (d or 1)
    if bound >= MAX_DIM:
        raise ValueError(f"tensor {name!r}: invalid shape {str(shape)[:80]}")
    if type(offsets) is not list or len(offsets) != 2 or type(offsets[0]) is not int or type(offsets[1]) is not int:
        raise ValueError(f"tensor {name!r}: invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise ValueError(f"tensor {name!r}: data_offsets {offsets} outside the {data_len}-byte data buffer")
    expected = count * dtype.itemsize
    if end - begin != expected:
        raise ValueError(f"tensor {name!r}: {end - begin} bytes for dtype {dtype_name} shape {shape} ({expected})")
    return dtype, shape, begin, end


def parse_safetensors(data: bytes | bytearray, source: str) -> tuple[dict[str, str], TensorViews]:
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
        try:
            header = json.loads(buffer[8 : 8 + header_len])
        except RecursionError:
            raise ValueError("header nests too deeply") from None
        except ValueError as exc:
            raise ValueError(f"header is not valid JSON: {exc}") from exc
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("__metadata__ must map strings to strings")
        if len(header) > MAX_TENSORS:
            raise ValueError(f"declares {len(header)} tensors (limit {MAX_TENSORS})")
        start, data_len = 8 + header_len, len(buffer) - 8 - header_len
        spans = {name: _span(name, spec, data_len) for name, spec in header.items()}
        used = sorted((begin, end, name) for name, (_, _, begin, end) in spans.items() if end > begin)
        for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(used):
            if begin_b < end_a:
                raise ValueError(f"tensors {name_a!r} and {name_b!r} overlap in the data buffer")
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise AdapterError(f"cannot read {source}: {exc}") from exc
    return meta, TensorViews(buffer, start, spans)


class TensorViews(Mapping[str, torch.Tensor]):
    """A parsed file's tensors: zero-copy views of its buffer, each built on first access. `specs` and `stack`
    work from the header alone, so an adapter whose stacks lie back to back never builds its per-layer views."""

    def __init__(self, buffer: bytearray, start: int, spans: dict[str, tuple[torch.dtype, list[int], int, int]]):
        self._buffer, self._start, self._spans = buffer, start, spans
        # One uint8 view of the whole buffer: every aligned tensor is a slice of it.
        self._base = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.empty(0, dtype=torch.uint8)
        self._built: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._built:
            dtype, shape, begin, _ = self._spans[name]
            self._built[name] = self._view(self._start + begin, dtype, shape)
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    def specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """name -> (dtype, shape), without building any tensor."""
        return {name: (dtype, tuple(shape)) for name, (dtype, shape, _, _) in self._spans.items()}

    def stack(self, names: Sequence[str]) -> torch.Tensor:
        """(len(names), *shape): one view, no copy, when the tensors lie back to back with one dtype and shape (as
        `write_safetensors` lays out each stack of an adapter); otherwise a copy."""
        dtype, shape, begin, end = self._spans[names[0]]
        size = end - begin
        back_to_back = all(
            self._spans[name][0] == dtype and self._spans[name][1] == shape and self._spans[name][2] == begin + k * size
            for k, name in enumerate(names)
        )
        offset = self._start + begin
        if back_to_back and size and offset % dtype.itemsize == 0:
            return self._base[offset : offset + size * len(names)].view(dtype).view(len(names), *shape)
        return torch.stack([self[name] for name in names])

    def _view(self, offset: int, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        count = math.prod(shape)
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        if offset % dtype.itemsize:  # misaligned (never in files Chorus or safetensors write): a view of its own
            return torch.frombuffer(self._buffer, dtype=dtype, count=count, offset=offset).view(shape)
        return self._base[offset : offset + count * dtype.itemsize].view(dtype).view(shape)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file with the tensors' data in the dict's order (the safetensors library sorts by name).

    Readable by any safetensors reader; `tensors` must share one dtype size so every offset stays aligned."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        header[name] = {
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for t in tensors.values():
            f.write(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
