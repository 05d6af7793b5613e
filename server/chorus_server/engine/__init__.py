"""The Chorus engine: a frozen wav2vec 2.0 backbone serving many adapters in one exact batch."""

from chorus_server.engine.adapter_format import load_adapter, save_adapter
from chorus_server.engine.adapters import Adapter, AdapterInfo, Vocabulary, find_segments
from chorus_server.engine.config import BackboneConfig, PreprocessConfig
from chorus_server.engine.decode import Transcript, ctc_greedy_decode
from chorus_server.engine.engine import Engine, LoadedModel, pad_batch
from chorus_server.engine.errors import AdapterError, CheckpointError, EngineError, InputError

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
