"""The store is seeded with the backbone's own head as the checkpoint stores it, whatever dtype the server runs;
preparing an adapter for the engine never converts the caller's copy (the cache keeps that one as its host copy)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from chorus_server.engine import Engine, load_adapter
from chorus_server.runtime import Runtime
from chorus_server.validation import BackboneValidator
from chorus_store.loader import make_loader
from tests.server.conftest import make_settings


def test_a_bf16_server_publishes_the_head_unrounded(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir).model_copy(update={"dtype": "bfloat16"})
    runtime = Runtime.start(settings)
    try:
        assert runtime.engine.dtype == torch.bfloat16
        load = make_loader(runtime.store, BackboneValidator.for_engine(runtime.engine).load_version)
        published = load("chorus/default@1")
    finally:
        runtime.close()
    original = load_file(str(model_dir / "model.safetensors"))
    assert published.head.weight.dtype == torch.float32
    assert torch.equal(published.head.weight, original["lm_head.weight"])
    assert torch.equal(published.head.bias, original["lm_head.bias"])


def test_prepare_leaves_the_callers_adapter_as_it_was(model_dir):
    engine = Engine.from_pretrained(model_dir, device="cpu", dtype="bfloat16").engine
    path = sorted((model_dir / "adapters").glob("*.safetensors"))[0]
    host = load_adapter(path)
    before = {name: t.clone() for name, t in host.tensors().items()}
    prepared = engine.prepare(host)
    assert prepared is not host and prepared.head.weight.dtype == torch.bfloat16
    for name, tensor in host.tensors().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, before[name]), name
    # The prepared copy's per-layer views read its own (bf16) stacks.
    assert all(t.dtype == torch.bfloat16 for t in prepared.tensors().values())
