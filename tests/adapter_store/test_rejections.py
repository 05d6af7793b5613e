"""Every publish rejection rule, each provoked by a hostile file; nothing becomes visible."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from safetensors.torch import save

from chorus_store import AdapterNotFound, AdapterRejected
from tests.helpers import rebuild_safetensors

rebuild = rebuild_safetensors


def raw_file(header: dict, data: bytes = b"") -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def key(tensors, needle):
    return next(k for k in sorted(tensors) if needle in k)


def hostile(src) -> dict[str, tuple[bytes, str]]:
    """Rule -> (file bytes, expected message)."""
    return {
        "empty": (b"", "empty"),
        "pickle": (b"\x80\x04\x95" + b"\x00" * 64, "header claims"),
        "huge_header": (struct.pack("<Q", 2**40) + b"{}", "header claims"),
        "header_not_json": (struct.pack("<Q", 4) + b"nope", "not valid JSON"),
        "offsets_past_end": (
            raw_file({"head.weight": {"dtype": "F32", "shape": [1000000, 1000], "data_offsets": [0, 4 * 10**9]}}),
            "outside",
        ),
        "offsets_wrong_size": (
            raw_file({"head.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\x00" * 16),
            "8 bytes for dtype F32",
        ),
        "overlap": (
            raw_file(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                b"\x00" * 12,
            ),
            "overlap",
        ),
        "int_dtype": (rebuild(src, lambda t: t.update({"head.bias": t["head.bias"].to(torch.int32)})), "dtype I32"),
        "missing_key": (rebuild(src, lambda t: t.pop(key(t, "up.weight"))), "missing keys"),
        "unexpected_key": (rebuild(src, lambda t: t.update({"extra": torch.zeros(2)})), "unexpected keys"),
        "wrong_shape": (rebuild(src, lambda t: t.update({key(t, "down.weight"): torch.zeros(2, 2)})), "has shape"),
        "nan": (rebuild(src, lambda t: t[key(t, "up.bias")].fill_(float("inf"))), "NaN or Inf"),
        "no_blank": (rebuild(src, edit_meta=lambda m: m.update(blank_id="999")), "blank id 999"),
        "duplicate_vocab": (
            rebuild(src, edit_meta=lambda m: m.update(vocab=json.dumps(["a"] * len(json.loads(m["vocab"]))))),
            "duplicate tokens",
        ),
        "vocab_head_mismatch": (
            rebuild(src, edit_meta=lambda m: m.update(vocab=json.dumps([*json.loads(m["vocab"]), "zz"]))),
            "has shape",
        ),
        "wrong_fingerprint": (
            rebuild(src, edit_meta=lambda m: m.update(backbone_fingerprint="w2v2-" + "0" * 24)),
            "was trained for backbone",
        ),
        "wrong_hidden_size": (rebuild(src, edit_meta=lambda m: m.update(hidden_size="48")), "has shape"),
        "layer_out_of_range": (rebuild(src, edit_meta=lambda m: m.update(layers="[0, 1, 99]")), "missing keys"),
        "no_metadata": (save({"head.weight": torch.zeros(2, 2)}), "not a Chorus adapter"),
        "too_big": (b"\x00" * (4 * 1024 * 1024 + 1), "4194304-byte limit"),
    }


@pytest.mark.parametrize(
    "rule",
    [
        "empty",
        "pickle",
        "huge_header",
        "header_not_json",
        "offsets_past_end",
        "offsets_wrong_size",
        "overlap",
        "int_dtype",
        "missing_key",
        "unexpected_key",
        "wrong_shape",
        "nan",
        "no_blank",
        "duplicate_vocab",
        "vocab_head_mismatch",
        "wrong_fingerprint",
        "wrong_hidden_size",
        "layer_out_of_range",
        "no_metadata",
        "too_big",
    ],
)
def test_rule(store, adapter_files, rule):
    data, message = hostile(adapter_files[0])[rule]
    with pytest.raises(AdapterRejected, match=message):
        store.publish("acme/victim", io.BytesIO(data))
    with pytest.raises(AdapterNotFound):
        store.get("acme/victim")
    scratch = store.tmp_dir if hasattr(store, "tmp_dir") else store.scratch
    assert list(scratch.glob("*.part")) == []  # no upload left behind


def test_fingerprint_override_is_explicit_and_recorded(store, adapter_files):
    data = rebuild(adapter_files[0], edit_meta=lambda m: m.update(backbone_fingerprint="w2v2-" + "1" * 24))
    record = store.publish("acme/forced", io.BytesIO(data), allow_fingerprint_mismatch=True)
    assert record.fingerprint_override and record.backbone_fingerprint == "w2v2-" + "1" * 24


def test_rejection_leaves_existing_versions_alone(store, adapter_files):
    store.publish("acme/keep", adapter_files[0])
    with pytest.raises(AdapterRejected):
        store.publish("acme/keep", io.BytesIO(b"garbage-bytes-here"))
    assert store.get("acme/keep").version == 1
