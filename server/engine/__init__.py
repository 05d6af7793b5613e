"""The Chorus engine: a frozen wav2vec 2.0 backbone serving many adapters in one exact batch."""

from server.engine.adapter_format import load_adapter, save_adapter
from server.engine.adapters import Adapter, AdapterInfo, Vocabulary, find_segments
from server.engine.config import BackboneConfig, PreprocessConfig
from server.engine.decode import Transcript, ctc_greedy_decode
from server.engine.engine import Engine, LoadedModel, pad_batch
from server.engine.errors import AdapterError, CheckpointError, EngineError, InputError

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
