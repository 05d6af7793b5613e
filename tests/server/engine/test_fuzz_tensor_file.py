"""Fuzzing `parse_safetensors`: hostile bytes either parse into in-bounds views or raise `AdapterError`, nothing else.

Inputs are random bytes, valid files (written by safetensors itself) with bytes flipped, inserted, deleted or cut,
generated headers, and valid files whose JSON header is rewritten with generated dtypes, shapes and data_offsets
(negative, huge, overlapping, non-int, nested junk). When a file parses, every tensor must view the caller's buffer
at the header's offsets, with numel x itemsize equal to its span; well-formed headers must parse, and files written
by safetensors must round-trip to equal tensors and metadata.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from typing import Any

import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from chorus_server.engine.errors import AdapterError
from chorus_server.engine.tensor_file import DTYPES, MAX_DIM, MAX_HEADER_BYTES, MAX_TENSORS, parse_safetensors

SOURCE = "fuzzed file"
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Values that sit on the parser's bounds (int64, MAX_DIM, 2**53 for floats) or just past them.
INTERESTING = [-(2**63), -1, 0, 1, 2**31, 2**32, MAX_DIM - 1, MAX_DIM, 2**53 + 1, 2**63 - 1, 2**63, 2**64]
ints = st.integers(-4, 64) | st.sampled_from(INTERESTING) | st.integers(-(2**80), 2**80)
scalars = st.none() | st.booleans() | st.floats() | ints | st.text(max_size=4)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
dtype_values = st.sampled_from([*DTYPES, "F8_E4M3", "U16", "U32", "U64", "C64", "f32", "", "F32 "]) | junk
shape_values = st.lists(st.integers(0, 4), max_size=3) | st.lists(ints, max_size=4) | junk
offset_values = st.lists(ints, max_size=3) | junk
entries = st.fixed_dictionaries({"dtype": dtype_values, "shape": shape_values, "data_offsets": offset_values})
names = st.text(min_size=1, max_size=6).filter(lambda name: name != "__metadata__")
metadata = st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=12), max_size=3)


def _file(header: object, data: bytes = b"") -> bytes:
    """A safetensors file: 8-byte little-endian header length, the header (JSON-encoded unless bytes), the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A file whose header is valid JSON -> (the header, the data buffer)."""
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]), data[8 + header_len :]


def _check_views(buffer: bytearray, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """A successful parse returns the header's tensors as views of `buffer` at their offsets, none overlapping."""
    header, _ = _split(bytes(buffer))
    start, base = 8 + int.from_bytes(buffer[:8], "little"), torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    assert meta == (header.pop("__metadata__", None) or {})
    assert set(tensors) == set(header)
    spans = []
    for name, tensor in tensors.items():
        spec = header[name]
        begin, end = spec["data_offsets"]
        assert tensor.dtype == DTYPES[spec["dtype"]] and list(tensor.shape) == spec["shape"]
        assert tensor.numel() * tensor.element_size() == end - begin
        if tensor.numel():
            assert tensor.is_contiguous() and tensor.data_ptr() == base + start + begin
            assert begin >= 0 and start + end <= len(buffer)
            spans.append((begin, end))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(sorted(spans)))


def _check_parse(data: bytes, must_parse: bool = False) -> None:
    """`AdapterError` naming the source (never for a well-formed file when `must_parse`), or views keeping promises."""
    buffer = bytearray(data)
    try:
        meta, tensors = parse_safetensors(buffer, SOURCE)
    except AdapterError as exc:
        event("AdapterError")
        assert not must_parse, f"a well-formed file was refused: {exc}"
        assert SOURCE in str(exc)
        return
    event("parsed" if tensors else "parsed, no tensors")
    _check_views(buffer, meta, tensors)


def _tensor(dtype: torch.dtype, shape: list[int], seed: int) -> torch.Tensor:
    """Seeded random values of `dtype`, all finite so that `torch.equal` is a fair comparison."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64).to(dtype)


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[bytes, dict[str, torch.Tensor], dict[str, str]]:
    """(bytes written by `safetensors.torch.save`, the tensors saved, the metadata saved)."""
    specs = st.tuples(
        st.sampled_from(list(DTYPES.values())), st.lists(st.integers(0, 4), max_size=3), st.integers(0, 2**63 - 1)
    )
    drawn = draw(st.dictionaries(names, specs, max_size=4))
    tensors = {name: _tensor(dtype, shape, seed) for name, (dtype, shape, seed) in drawn.items()}
    meta = draw(metadata) or None  # safetensors 0.8 writes invalid JSON for no tensors and metadata={}
    return save(tensors, metadata=meta), tensors, meta or {}


Mutation = tuple[str, int, Any]
mutations = st.lists(
    st.tuples(st.just("flip"), st.integers(0), st.integers(1, 255))
    | st.tuples(st.just("flip_tail"), st.integers(0, 63), st.integers(1, 255))
    | st.tuples(st.just("insert"), st.integers(0), st.binary(min_size=1, max_size=8))
    | st.tuples(st.just("delete"), st.integers(0), st.integers(1, 16))
    | st.tuples(st.just("truncate"), st.integers(0), st.none())
    | st.tuples(st.just("length"), st.integers(-16, 16), st.none()),
    min_size=1,
    max_size=4,
)


def _mutate(data: bytes, ops: list[Mutation]) -> bytes:
    """Apply byte-level edits; positions wrap around the current length, "flip_tail" counts from the end (the data
    buffer), "length" shifts the header length field."""
    out = bytearray(data)
    for op, pos, arg in ops:
        at = pos % (len(out) + 1)
        if op == "flip" and at < len(out):
            out[at] ^= arg
        elif op == "flip_tail" and pos < len(out):
            out[-1 - pos] ^= arg
        elif op == "insert":
            out[at:at] = arg
        elif op == "delete":
            del out[at : at + arg]
        elif op == "truncate":
            del out[at:]
        elif op == "length" and len(out) >= 8:
            out[:8] = struct.pack("<Q", (int.from_bytes(out[:8], "little") + pos) % 2**64)
    return bytes(out)


@FUZZ
@given(st.binary(max_size=256) | st.binary(max_size=256).map(_file))
@example(struct.pack("<Q", 2**64 - 1) + b"{}")
@example(_file(b" " * (MAX_HEADER_BYTES + 1)))
@example(_file(b"\xef\xbb\xbf{}"))
@example(_file("{}".encode("utf-16")))
def test_random_bytes_parse_or_raise_adapter_error(data: bytes) -> None:
    _check_parse(data)


@FUZZ
@given(valid_files(), mutations)
def test_mutated_valid_files_parse_or_raise_adapter_error(file: tuple[bytes, Any, Any], ops: list[Mutation]) -> None:
    _check_parse(_mutate(file[0], ops))


headers = (
    st.dictionaries(names, entries | junk, max_size=4).map(lambda header: json.dumps(header).encode())
    | st.builds(
        lambda header, meta: json.dumps({**header, "__metadata__": meta}).encode(),
        st.dictionaries(names, entries, max_size=2),
        metadata | junk,
    )
    | junk.map(lambda value: json.dumps(value).encode())
)


@FUZZ
@given(headers, st.binary(max_size=64))
@example(json.dumps({f"t{i}": {} for i in range(MAX_TENSORS + 1)}).encode(), b"")
@example(b'{"t": {"dtype": [], "shape": [], "data_offsets": [0, 0]}}', b"")  # TypeError: unhashable type: 'list'
@example(b'{"t": {"dtype": {"F32": 1}, "shape": [1], "data_offsets": [0, 4]}}', b"abcd")  # TypeError: ... 'dict'
def test_generated_headers_parse_or_raise_adapter_error(header: bytes, data: bytes) -> None:
    _check_parse(_file(header, data))


@FUZZ
@given(st.integers(1, 3000), st.sampled_from(["[", "{"]), st.booleans())
@example(100_000, "[", False)  # RecursionError from json.loads, not AdapterError
def test_deeply_nested_headers_parse_or_raise_adapter_error(depth: int, opener: str, in_entry: bool) -> None:
    """`depth` levels of lists or objects, as the whole header or as one tensor's entry."""
    nested = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "0" + "}" * depth
    _check_parse(_file(('{"t": ' + nested + "}" if in_entry else nested).encode()))


Rewrite = tuple[int, str, Any]
near = st.lists(st.integers(-2, 2100), min_size=2, max_size=2)  # in, at and past the end of a saved data buffer
rewrites = st.lists(
    st.tuples(st.integers(0, 5), st.just("dtype"), dtype_values)
    | st.tuples(st.integers(0, 5), st.just("shape"), shape_values)
    | st.tuples(st.integers(0, 5), st.just("data_offsets"), near | offset_values)
    | st.tuples(st.integers(0, 5), st.just("offsets_of"), st.integers(0, 5))
    | st.tuples(st.integers(0, 5), st.just("entry"), junk | entries),
    min_size=1,
    max_size=4,
)


def _rewrite(header: dict[str, Any], edits: list[Rewrite]) -> dict[str, Any]:
    """Edit a header in place: `target` picks a tensor, a new one or `__metadata__` (wrapping); "offsets_of" gives
    the target another tensor's data_offsets, so that the two overlap."""
    for target, field, value in edits:
        names = [name for name in header if name != "__metadata__"]
        name = [*names, "new", "__metadata__"][target % (len(names) + 2)]
        if name == "__metadata__" or field == "entry":
            header[name] = value
            continue
        header[name] = header[name] if isinstance(header.get(name), dict) else {}
        if field == "offsets_of":
            other = header.get(names[value % len(names)]) if names else None
            field, value = "data_offsets", other.get("data_offsets") if isinstance(other, dict) else None
        header[name][field] = value
    return header


@FUZZ
@given(valid_files().map(lambda file: file[0]), rewrites, st.integers(-4, 4))
@example(_file({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"x"), [(0, "dtype", [])], 0)
def test_rewritten_headers_parse_or_raise_adapter_error(raw: bytes, edits: list[Rewrite], tail: int) -> None:
    """A saved file with some header fields replaced, and its data buffer cut or extended by `tail` bytes."""
    header, buffer = _split(raw)
    _check_parse(_file(_rewrite(header, edits), buffer[: len(buffer) + tail] if tail < 0 else buffer + b"\0" * tail))


small_shapes = st.lists(st.integers(0, 3), max_size=4)
empty_shapes = st.lists(st.integers(0, MAX_DIM - 1), min_size=1, max_size=3).flatmap(
    lambda dims: st.permutations([0, *dims])
)
layouts = st.lists(st.tuples(st.sampled_from(list(DTYPES)), small_shapes | empty_shapes, st.integers(0, 3)), max_size=5)


@FUZZ
@given(layouts, st.integers(0, 8), metadata)
@example([("F32", [0, 2**39, 2**39], 0)], 0, None)  # RuntimeError "Stride calculation overflowed" in torch.empty
@example([("U8", [2**32, 2**32, 0], 0)], 0, None)  # RuntimeError "Storage size calculation overflowed" (ditto)
def test_well_formed_headers_parse(layout: list[tuple[str, list[int], int]], tail: int, meta: Any) -> None:
    """Tensors laid out one after another (with gaps) in every dtype parse; zero-sized ones with dims up to MAX_DIM
    that torch may not be able to represent parse or raise `AdapterError`."""
    header: dict[str, Any] = {} if meta is None else {"__metadata__": meta}
    offset = 0
    for i, (dtype, shape, gap) in enumerate(layout):
        begin = offset + gap
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + _nbytes(dtype, shape)]}
        offset = begin + _nbytes(dtype, shape)
    data = bytes(i % 251 for i in range(offset + tail))
    _check_parse(_file(header, data), must_parse=all(max(shape, default=0) <= 3 for _, shape, _ in layout))


def _nbytes(dtype: str, shape: list[int]) -> int:
    return DTYPES[dtype].itemsize * math.prod(shape)


@FUZZ
@given(valid_files(), st.booleans())
def test_saved_files_round_trip(file: tuple[bytes, dict[str, torch.Tensor], dict[str, str]], as_bytes: bool) -> None:
    raw, tensors, meta = file
    parsed_meta, parsed = parse_safetensors(raw if as_bytes else bytearray(raw), SOURCE)
    assert parsed_meta == meta
    assert set(parsed) == set(tensors)
    for name, tensor in tensors.items():
        assert parsed[name].dtype == tensor.dtype and parsed[name].shape == tensor.shape
        assert torch.equal(parsed[name], tensor)
    _check_parse(raw, must_parse=True)
