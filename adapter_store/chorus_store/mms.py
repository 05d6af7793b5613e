"""Import of MMS adapters (`adapter.<lang>.safetensors` + nested `vocab.json`) as native versioned adapters."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from chorus_server.engine.adapter_format import load_mms_adapter, save_adapter
from chorus_server.engine.errors import AdapterError
from chorus_store.base import AdapterRecord, AdapterStore
from chorus_store.errors import AdapterRejected
from chorus_store.validate import AdapterSpec


def import_mms(
    store: AdapterStore,
    spec: AdapterSpec,
    adapter_file: Path,
    vocab_file: Path,
    language: str,
    adapter_id: str,
    owner: str,
    visibility: str = "public",
) -> AdapterRecord:
    """Convert an MMS adapter for the serving backbone into the native format and publish it."""
    try:
        vocab_json = json.loads(vocab_file.read_text())
        adapter = load_mms_adapter(adapter_file, vocab_json, language, spec.hidden_size, spec.fingerprint)
    except (OSError, json.JSONDecodeError, AdapterError) as exc:
        raise AdapterRejected(f"cannot import MMS adapter {adapter_file.name} ({language}): {exc}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        native = Path(tmp) / f"{adapter_id}.safetensors"
        save_adapter(adapter, native)
        return store.publish(adapter_id, native, owner=owner, visibility=visibility)
