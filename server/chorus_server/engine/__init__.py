"""The Chorus engine: a frozen wav2vec 2.0 backbone serving many adapters in one exact batch.

The names below are imported on first use (PEP 562), so `chorus_server.engine.errors` (which the HTTP error
mapping needs) loads without torch: `chorus keys create` writes a key in a fraction of a second, not 3 s.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chorus_server.engine.adapter_format import load_adapter, save_adapter
    from chorus_server.engine.adapters import Adapter, AdapterInfo, Vocabulary, find_segments
    from chorus_server.engine.config import BackboneConfig, PreprocessConfig
    from chorus_server.engine.decode import Transcript, ctc_greedy_decode
    from chorus_server.engine.engine import Engine, LoadedModel, pad_batch
    from chorus_server.engine.errors import AdapterError, CheckpointError, EngineError, InputError

_HOMES = {
    "load_adapter": "adapter_format",
    "save_adapter": "adapter_format",
    "Adapter": "adapters",
    "AdapterInfo": "adapters",
    "Vocabulary": "adapters",
    "find_segments": "adapters",
    "BackboneConfig": "config",
    "PreprocessConfig": "config",
    "Transcript": "decode",
    "ctc_greedy_decode": "decode",
    "Engine": "engine",
    "LoadedModel": "engine",
    "pad_batch": "engine",
    "AdapterError": "errors",
    "CheckpointError": "errors",
    "EngineError": "errors",
    "InputError": "errors",
}
__all__ = [
    "Adapter",
    "AdapterError",
    "AdapterInfo",
    "BackboneConfig",
    "CheckpointError",
    "Engine",
    "EngineError",
    "InputError",
    "LoadedModel",
    "PreprocessConfig",
    "Transcript",
    "Vocabulary",
    "ctc_greedy_decode",
    "find_segments",
    "load_adapter",
    "pad_batch",
    "save_adapter",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
