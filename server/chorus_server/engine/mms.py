"""Local conversion of an MMS adapter file to the native format, for `chorus adapters import-mms`."""

from __future__ import annotations

import json
import os
from pathlib import Path


def convert_mms(
    adapter_file: str | os.PathLike[str],
    vocab_file: str | os.PathLike[str],
    language: str,
    out: str | os.PathLike[str],
    *,
    backbone: str | os.PathLike[str] | None = None,
    fingerprint: str | None = None,
) -> Path:
    """Write `adapter.<lang>.safetensors` + its vocabulary as a native adapter for the given backbone.

    The backbone is named either by a local copy (its fingerprint is computed) or by its fingerprint, in which
    case the hidden size is read from the adapter's own CTC head.
    """
    from safetensors import safe_open

    from chorus_server.engine import Engine, EngineError, save_adapter
    from chorus_server.engine.adapter_format import load_mms_adapter

    adapter_file, vocab_file, out = Path(adapter_file), Path(vocab_file), Path(out)
    try:
        if backbone is not None:
            engine = Engine.from_pretrained(backbone, device="cpu").engine
            hidden_size, fp = engine.config.hidden_size, engine.fingerprint
        elif fingerprint:
            with safe_open(str(adapter_file), framework="pt") as f:
                if "lm_head.weight" not in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    raise ValueError(f"{adapter_file.name}: no lm_head.weight; pass --backbone instead")
                hidden_size, fp = int(f.get_slice("lm_head.weight").get_shape()[1]), fingerprint
        else:
            raise ValueError("name the serving backbone: a local copy (backbone) or its fingerprint")
        adapter = load_mms_adapter(adapter_file, json.loads(vocab_file.read_text()), language, hidden_size, fp)
    except EngineError as exc:
        raise ValueError(f"cannot import {adapter_file.name} ({language}): {exc}") from exc
    save_adapter(adapter, out)
    return out
