"""The one check of an adapter file against the backbone this server runs, shared by publish and serve.

The store calls `validate` before a version becomes visible; the cache loader calls `load` on the stored bytes.
Both run the same steps: the bounded safetensors parse, metadata, tensor names, shapes, dtypes and finiteness
(`adapter_from_bytes`), then the fit to this backbone (`check_fit`: hidden size, layers, fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus_server.decoding.request import spelling_symbols
from chorus_server.engine import Engine
from chorus_server.engine.adapter_format import adapter_from_bytes, check_fit
from chorus_server.engine.adapters import Adapter
from chorus_server.engine.errors import AdapterError
from chorus_store import AdapterRecord, AdapterRejected, AdapterSummary


@dataclass(frozen=True)
class BackboneValidator:
    """What the serving backbone accepts (implements `chorus_store.AdapterValidator`)."""

    hidden_size: int
    num_layers: int
    fingerprint: str
    conv_dims: tuple[int, ...] = ()  # channels per conv layer (CNN adapters must match)

    @classmethod
    def for_engine(cls, engine: Engine) -> BackboneValidator:
        config = engine.config
        return cls(config.hidden_size, config.num_hidden_layers, engine.fingerprint, tuple(config.conv_dim))

    def load(
        self, data: bytes | bytearray, allow_fingerprint_mismatch: bool = False, check_finite: bool = True
    ) -> Adapter:
        """The adapter in `data` on the CPU, checked; raises `AdapterError` naming the problem."""
        adapter = adapter_from_bytes(data, check_finite)
        fingerprint = None if allow_fingerprint_mismatch else self.fingerprint
        check_fit(adapter, self.hidden_size, self.num_layers, fingerprint, self.conv_dims)
        return adapter

    def load_version(self, data: bytearray, record: AdapterRecord) -> Adapter:
        """A stored version (the cache loader's builder): published with an override, it keeps that override.
        Its weights were scanned for NaN/Inf when it was published, and the loader discards the build unless the
        bytes match the checksum taken then, so the scan is not repeated on every cold load. The fit is checked
        again: the store may be shared by servers on other backbones."""
        return self.load(data, record.fingerprint_override, check_finite=False)

    def validate(self, data: bytes | bytearray, allow_fingerprint_mismatch: bool = False) -> AdapterSummary:
        try:
            adapter = self.load(data, allow_fingerprint_mismatch)
        except AdapterError as exc:
            raise AdapterRejected(str(exc)) from exc
        return AdapterSummary(
            kind=adapter.info.kind,
            language=adapter.info.language,
            task=adapter.info.task,
            vocab_size=len(adapter.vocab),
            bottleneck_dim=adapter.bottleneck_dim,
            layers=list(adapter.layer_ids),
            backbone_fingerprint=adapter.info.backbone_fingerprint,
            symbols=frozenset() if adapter.is_classifier else spelling_symbols(adapter.vocab),
        )


@dataclass(frozen=True)
class BackboneInfo:
    """What a server needs to know of its backbone besides running it: the adapter check, the audio rate, where it
    runs. Plain data: a cluster ingress gets it from a worker instead of loading the backbone."""

    validator: BackboneValidator
    sampling_rate: int
    device: str
    dtype: str
    default_adapter: str | None = None  # what `whisper-1` means: the backbone's own head, or the configured one

    @classmethod
    def of(cls, engine: Engine, default_adapter: str | None = None) -> BackboneInfo:
        dtype = str(engine.dtype).removeprefix("torch.")
        validator = BackboneValidator.for_engine(engine)
        return cls(validator, engine.preprocess.sampling_rate, str(engine.device), dtype, default_adapter)

    @property
    def fingerprint(self) -> str:
        return self.validator.fingerprint
