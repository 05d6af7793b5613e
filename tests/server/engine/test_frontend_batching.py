"""The front end runs items of one length together (on a GPU by default): each item still in GEMMs of its own
shape, so the features and logits are bitwise the item-by-item ones, while a batch of equal windows launches the
kernels of one item instead of one set per item."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from chorus_server.engine import Engine, load_adapter, pad_batch
from chorus_server.engine.config import BackboneConfig
from chorus_server.engine.frontend import FeatureEncoder, equal_length_groups
from chorus_server.engine.random_model import random_classifier

LONG, SHORT = 8000, 12000


@pytest.mark.parametrize(
    ("sizes", "counts", "cnn", "groups"),
    [
        ([], [], [], []),
        ([8000], [24], [None], [[0]]),
        ([8000, 8000, 12000, 8000], [24, 24, 37, 24], [None] * 4, [[0, 1, 3], [2]]),
        ([8000, 8000], [24, 24], ["a", "b"], [[0], [1]]),  # another CNN adapter: another front end
        ([300, 300, 8000], [0, 0, 24], [None] * 3, [[2]]),  # too short for a frame: never run
    ],
)
def test_items_group_by_length_and_cnn_adapter(sizes, counts, cnn, groups):
    assert equal_length_groups(sizes, counts, cnn) == groups


def test_groups_are_bounded_in_items():
    """A group's activations grow with its items (layers 0-1: ~100 MB per 20 s bf16 window): chunks of `most`."""
    assert equal_length_groups([8000] * 5, [24] * 5, [None] * 5, most=2) == [[0, 1], [2, 3], [4]]


class Gemms(TorchFunctionMode):
    """Counts GEMM calls (each is at least one kernel launch on a GPU)."""

    CALLS = frozenset({torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.Tensor.addmm_, torch.Tensor.baddbmm_})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in self.CALLS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_equal_windows_launch_the_gemms_of_one_item(norm):
    """Before, every item ran its own conv GEMMs: 8 equal windows cost 8 times one window's."""
    config = BackboneConfig(
        conv_dim=(16, 16, 16),
        conv_stride=(5, 2, 2),
        conv_kernel=(10, 3, 2),
        hidden_size=32,
        num_attention_heads=4,
        feat_extract_norm=norm,
    )
    torch.manual_seed(0)
    fe = FeatureEncoder(config).requires_grad_(False)
    fe.batch_equal_lengths = True  # as on a GPU

    def gemms(items: int) -> int:
        with torch.inference_mode(), Gemms() as counter:
            fe(torch.randn(items, 4000), torch.full((items,), 4000))
        return counter.count

    assert gemms(8) == gemms(2) > 0


@pytest.fixture(scope="module")
def engines(random_model_dir):
    _, path = random_model_dir
    return {dtype: Engine.from_pretrained(path, device="cpu", dtype=dtype).engine for dtype in ("float32", "bfloat16")}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_are_bitwise_those_of_item_by_item(engines, random_model_dir, dtype):
    """A mixed batch (CTC adapters, a classifier with a CNN adapter, repeated lengths, an item too short for a
    frame) gives the same bits with the front end batched by length as item by item."""
    _, path = random_model_dir
    engine = engines[dtype]
    config = engine.config
    files = sorted((path / "adapters").glob("*.safetensors"))[:2]
    n = config.num_hidden_layers
    classifier = random_classifier(config, "lid", ["en", "fr"], 4, list(range(n)), 5, engine.fingerprint, 4, [1])
    adapters = [engine.prepare(load_adapter(f)) for f in files] + [engine.prepare(classifier)]
    gen = torch.Generator().manual_seed(3)
    sizes = (LONG, LONG, SHORT, LONG, SHORT, 300, LONG, LONG)
    chosen = [0, 1, 0, 2, 1, 0, 2, 0]
    waveforms, lengths = pad_batch([torch.randn(k, generator=gen) for k in sizes])
    fe = engine.backbone.feature_extractor
    try:
        fe.batch_equal_lengths = False
        alone = engine.forward(waveforms, lengths, [adapters[i] for i in chosen])
        fe.batch_equal_lengths = True
        together = engine.forward(waveforms, lengths, [adapters[i] for i in chosen])
    finally:
        fe.batch_equal_lengths = None
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)
