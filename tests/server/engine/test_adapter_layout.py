"""Adapters hold stacked per-site tensors; the file format (per-layer names) is unchanged and still loads."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from chorus_server.engine import load_adapter
from chorus_server.engine.adapter_format import adapter_from_bytes

HIDDEN, DIM, LAYERS = 8, 3, (1, 4)


def write_by_hand(path, kind: str) -> dict[str, torch.Tensor]:
    """A native file written with safetensors directly, by the names docs/adapter-format.md defines."""
    gen = torch.Generator().manual_seed(0)
    parts = {"down.weight": (DIM, HIDDEN), "down.bias": (DIM,), "up.weight": (HIDDEN, DIM), "up.bias": (HIDDEN,)}
    if kind == "mms":
        parts |= {"norm.weight": (HIDDEN,), "norm.bias": (HIDDEN,)}
    sites = ("output",) if kind == "mms" else ("attn", "ffn")
    tensors = {
        f"layers.{i}.{site}.{part}": torch.randn(shape, generator=gen)
        for i in LAYERS
        for site in sites
        for part, shape in parts.items()
    }
    tensors |= {"head.weight": torch.randn(4, HIDDEN, generator=gen), "head.bias": torch.randn(4, generator=gen)}
    meta = {
        "format": "chorus-adapter",
        "format_version": "1",
        "kind": kind,
        "name": "hand",
        "vocab": json.dumps(["<pad>", "|", "a", "b"]),
        "blank_id": "0",
        "word_delimiter_id": "1",
        "hidden_size": str(HIDDEN),
        "bottleneck_dim": str(DIM),
        "layers": json.dumps(list(LAYERS)),
        "backbone_fingerprint": "",
    }
    save_file(tensors, str(path), metadata=meta)
    return tensors


def reference_bottleneck(x: torch.Tensor, t: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    y = x
    if f"{prefix}.norm.weight" in t:
        y = torch.nn.functional.layer_norm(x, (HIDDEN,), t[f"{prefix}.norm.weight"], t[f"{prefix}.norm.bias"])
    down = torch.relu(y @ t[f"{prefix}.down.weight"].T + t[f"{prefix}.down.bias"])
    return x + down @ t[f"{prefix}.up.weight"].T + t[f"{prefix}.up.bias"]


def test_hand_written_files_load_into_stacks(tmp_path):
    for kind, sites in (("mms", ("output",)), ("houlsby", ("attn", "ffn"))):
        path = tmp_path / f"{kind}.safetensors"
        tensors = write_by_hand(path, kind)
        adapter = load_adapter(path)
        assert adapter.num_parameters() == sum(t.numel() for t in tensors.values())
        assert adapter.stack(sites[0], "down.weight").shape == (len(LAYERS), DIM, HIDDEN)  # (L, r, H)
        for name, value in adapter.tensors().items():
            assert torch.equal(value, tensors[name]), name
        x = torch.randn(2, 5, HIDDEN)
        for layer in LAYERS:
            for site in sites:
                block = adapter.block(layer, site)
                assert block is not None
                torch.testing.assert_close(block(x), reference_bottleneck(x, tensors, f"layers.{layer}.{site}"))
        assert adapter.block(0, sites[0]) is None
        assert torch.equal(adapter_from_bytes(path.read_bytes()).tensors()["head.bias"], tensors["head.bias"])


def test_blocks_follow_the_parameters_after_to(tmp_path):
    write_by_hand(tmp_path / "a.safetensors", "mms")
    adapter = load_adapter(tmp_path / "a.safetensors").to(torch.bfloat16)
    block = adapter.block(LAYERS[0], "output")
    assert block is not None and block.down_weight.dtype == torch.bfloat16
    assert block.down_weight.data_ptr() == adapter.stack("output", "down.weight").data_ptr()


def test_same_shaped_adapters_mixed_in_a_batch_match_solo_runs(random_model_dir):
    """Segments whose bottlenecks share a shape run as batched matmuls; each item still equals its solo run."""
    from chorus_server.engine import Engine, pad_batch
    from chorus_server.engine.random_model import random_adapter

    variant, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu", dtype="float32").engine
    kind = "mms" if variant == "tiny-mms" else "houlsby"
    layers = list(range(engine.config.num_hidden_layers))
    adapters = [
        engine.prepare(random_adapter(engine.config, kind, f"a{i}", 4, layers, 6 + i, 50 + i, engine.fingerprint))
        for i in range(3)
    ]
    gen = torch.Generator().manual_seed(1)
    audios = [torch.randn(n, generator=gen) for n in (8000, 3000, 12000, 5000)]
    order = [adapters[0], adapters[1], adapters[0], adapters[2]]
    batched = engine.forward(*pad_batch(audios), order)
    for audio, adapter, got in zip(audios, order, batched, strict=True):
        solo = engine.forward(*pad_batch([audio]), [adapter])[0]
        assert got.shape == solo.shape
        assert (got - solo).abs().max().item() <= 1e-4


def test_gradients_reach_conv_weights_and_adapter_stacks(random_model_dir):
    """Training (the demo's trainer) needs autograd through the GEMM front end and the stacked adapters."""
    from chorus_server.engine.adapters import Segment
    from chorus_server.engine.checkpoint import load_backbone
    from chorus_server.engine.config import BackboneConfig
    from chorus_server.engine.random_model import random_adapter

    variant, path = random_model_dir
    config = BackboneConfig.from_dir(path)
    backbone = load_backbone(path, config)[0].train().requires_grad_(True)
    kind = "mms" if variant == "tiny-mms" else "houlsby"
    adapter = random_adapter(config, kind, "a", 4, list(range(config.num_hidden_layers)), 6, 1, "")
    adapter.block(0, adapter.sites[0])  # a cached lookup built before training starts must not be used for it
    adapter.requires_grad_(True)
    hidden, _ = backbone(torch.randn(2, 8000), torch.tensor([8000, 6000]), [Segment(0, 2, adapter)])
    adapter.head(hidden).square().mean().backward()
    for layer in backbone.feature_extractor.conv_layers:
        assert layer.conv.weight.grad is not None and layer.conv.weight.grad.abs().sum() > 0
    for site, part in adapter.stack_keys():
        grad = adapter.stack(site, part).grad
        assert grad is not None and grad.abs().sum() > 0, (site, part)


def test_gradients_start_at_the_lowest_trainable_stage(random_model_dir):
    """One forward for serving and training: with a frozen backbone and an adapter in the top layer only, nothing
    below that layer keeps autograd state; the adapter's layer and the head do."""
    from chorus_server.engine.adapters import Segment
    from chorus_server.engine.checkpoint import load_backbone
    from chorus_server.engine.config import BackboneConfig
    from chorus_server.engine.random_model import random_adapter

    variant, path = random_model_dir
    config = BackboneConfig.from_dir(path)
    backbone = load_backbone(path, config)[0].requires_grad_(False)
    top = config.num_hidden_layers - 1
    kind = "mms" if variant == "tiny-mms" else "houlsby"
    adapter = random_adapter(config, kind, "a", 4, [top], 6, 1, "").requires_grad_(True)
    tracked: dict[int, bool] = {}
    for i, layer in enumerate(backbone.encoder.layers):
        layer.register_forward_hook(lambda _m, _in, out, i=i: tracked.__setitem__(i, out.requires_grad))
    hidden, _ = backbone(torch.randn(1, 8000), torch.tensor([8000]), [Segment(0, 1, adapter)])
    assert tracked == {i: i == top for i in range(config.num_hidden_layers)}
    adapter.head(hidden).sum().backward()
    assert all(adapter.stack(site, part).grad is not None for site, part in adapter.stack_keys())
    with torch.no_grad():  # inference: the gate leaves a pass without autograd alone
        assert not backbone(torch.randn(1, 8000), torch.tensor([8000]), [Segment(0, 1, adapter)])[0].requires_grad


def test_chorus_written_files_load_without_copying_the_stacks(tmp_path):
    """`save_adapter` lays each stack's layers back to back, so a float32 load makes each stack one view of the
    file's buffer; the file stays a plain safetensors file that the safetensors library reads back exactly."""
    from safetensors.torch import load_file

    from chorus_server.engine.adapter_format import save_adapter

    write_by_hand(tmp_path / "hand.safetensors", "mms")
    original = load_adapter(tmp_path / "hand.safetensors")  # per-layer order: stacks are copies
    save_adapter(original, tmp_path / "chorus.safetensors")
    data = bytearray((tmp_path / "chorus.safetensors").read_bytes())
    adapter = adapter_from_bytes(data)
    buffer_start = torch.frombuffer(data, dtype=torch.uint8).data_ptr()
    for site, part in adapter.stack_keys():
        stack = adapter.stack(site, part)
        assert buffer_start <= stack.data_ptr() < buffer_start + len(data), (site, part)  # a view, no copy
    assert not buffer_start <= original.stack("output", "down.weight").data_ptr() < buffer_start + len(data)
    written = load_file(str(tmp_path / "chorus.safetensors"))
    for name, value in original.tensors().items():
        assert torch.equal(adapter.tensors()[name], value), name
        assert torch.equal(written[name], value), name


def test_bf16_files_are_stacked_into_float32_copies(tmp_path):
    from chorus_server.engine.adapter_format import save_adapter

    write_by_hand(tmp_path / "hand.safetensors", "houlsby")
    original = load_adapter(tmp_path / "hand.safetensors")
    save_adapter(original, tmp_path / "bf16.safetensors", dtype=torch.bfloat16)
    adapter = load_adapter(tmp_path / "bf16.safetensors")
    for name, value in original.tensors().items():
        assert adapter.tensors()[name].dtype == torch.float32
        assert torch.equal(adapter.tensors()[name], value.bfloat16().float()), name
