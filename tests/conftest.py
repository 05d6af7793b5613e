"""Shared fixtures: tiny random backbones written by transformers itself (an independent oracle) and by Chorus."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests import postgres_server

VARIANTS = {
    # wav2vec2-base layout: GroupNorm front end, post-LN, no conv bias, even positional kernel.
    "post-ln": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, num_conv_pos_embeddings=16),
    # large / XLS-R / MMS layout: LayerNorm front end, pre-LN, conv bias, odd positional kernel, MMS adapter slots.
    "pre-ln": dict(
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        num_conv_pos_embeddings=15,
        adapter_attn_dim=8,
    ),
}
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz'"]


def hf_config(variant: str):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        conv_dim=(24,) * 7,
        num_conv_pos_embedding_groups=4,
        vocab_size=len(VOCAB),
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        **VARIANTS[variant],
    )


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Move norm weights/biases and all biases away from their identity init so every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
            elif "adapter_layer" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


def build_hf_model(variant: str, seed: int = 0):
    """A random `Wav2Vec2ForCTC` built by transformers (eval mode)."""
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(hf_config(variant)).eval()
    perturb_(model, seed)
    return model


def save_hf_model(model, path: Path) -> Path:
    model.save_pretrained(str(path))
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    return path


@pytest.fixture(scope="session", params=list(VARIANTS))
def hf_model_dir(request, tmp_path_factory) -> tuple[str, object, Path]:
    """(variant, transformers model, directory it was saved to) for each backbone variant."""
    model = build_hf_model(request.param)
    path = save_hf_model(model, tmp_path_factory.mktemp(f"hf-{request.param}"))
    return request.param, model, path


@pytest.fixture(scope="session", params=["tiny", "tiny-mms"])
def random_model_dir(request, tmp_path_factory) -> tuple[str, Path]:
    """(preset, directory) written by `chorus dev random-model` with 6 native adapters."""
    from chorus_server.engine.random_model import write_random_model

    path = tmp_path_factory.mktemp(f"random-{request.param}")
    write_random_model(path, request.param, num_adapters=6, seed=3)
    return request.param, path


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the session; tests use their own prefixes in its bucket."""
    from tests.s3_server import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


_database_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of the session's PostgreSQL server (its `chorus` database). Skips when PostgreSQL is not installed, and
    fails instead where CHORUS_TEST_POSTGRES=require (CI)."""
    reason = postgres_server.missing_reason()
    if reason is not None:
        if postgres_server.required():
            pytest.fail(f"{reason} ({postgres_server.REQUIRE_ENV}=require)")
        pytest.skip(reason)
    with postgres_server.postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """URL of a new, empty database on the session's server, for this test alone."""
    return postgres_server.create_database(postgres_server_url, f"test_{next(_database_names)}")
