"""Every public engine API that takes a file or directory accepts `str` and `os.PathLike` as well as `Path` (the
README's `load_adapter("fr.safetensors")` used to raise AttributeError)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chorus_server.engine import Engine, load_adapter, save_adapter
from chorus_server.engine.adapter_format import read_adapter_file
from chorus_server.engine.checkpoint import read_state_dict, write_checkpoint
from chorus_server.engine.config import BackboneConfig, PreprocessConfig
from chorus_server.engine.random_model import write_random_model


class Spelled(os.PathLike[str]):
    """A PathLike that is not a Path (as some libraries hand out)."""

    def __init__(self, path: Path):
        self.path = path

    def __fspath__(self) -> str:
        return str(self.path)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("paths")
    adapters = write_random_model(str(out / "model"), "tiny", num_adapters=1, seed=3)
    return out / "model", adapters


@pytest.mark.parametrize("spell", [str, Spelled, Path], ids=["str", "PathLike", "Path"])
def test_files_and_directories_in_any_spelling(model, tmp_path, spell):
    directory, (adapter_file,) = model
    adapter = load_adapter(spell(adapter_file))
    assert read_adapter_file(spell(adapter_file))[0]["name"] == adapter.name
    copy = tmp_path / "copy.safetensors"
    save_adapter(adapter, spell(copy))
    assert load_adapter(copy).name == adapter.name
    assert BackboneConfig.from_dir(spell(directory)).hidden_size > 0
    assert PreprocessConfig.from_dir(spell(directory)).sampling_rate == 16000
    assert read_state_dict(spell(directory))
    loaded = Engine.from_pretrained(spell(directory), device="cpu")
    assert loaded.engine.prepare(adapter) is not None
    write_checkpoint(spell(tmp_path / "written"), loaded.engine.backbone, {}, {"a": 0})
    assert (tmp_path / "written" / "config.json").is_file()
