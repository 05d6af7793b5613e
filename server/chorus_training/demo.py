"""The bundled demo model (`chorus_server/demo_model/`): where it lives, its sample recordings, and its CER report.

Layout: `backbone/` (HF layout; its CTC head is English), `adapters/<lang>.safetensors` (native adapters trained
on that backbone), `samples/<lang>-<n>.wav` + `samples/samples.jsonl` (test-split utterances), `MODEL_CARD.md`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chorus_server.demo_model import DEMO_DIR
from chorus_training.manifest import error_rate, read_manifest

BACKBONE_LANGUAGE = "en"


def adapter_path(lang: str, demo_dir: Path = DEMO_DIR) -> Path | None:
    """The adapter file of `lang`, or None for the backbone's own language."""
    return None if lang == BACKBONE_LANGUAGE else demo_dir / "adapters" / f"{lang}.safetensors"


def export_samples(data_dir: Path, langs: list[str], per_lang: int, out: Path) -> Path:
    """Copy the first `per_lang` test-split utterances of each language to `out/<lang>-<n>.wav` and write
    `out/samples.jsonl` (`audio`, `text`, `lang`, `voice`)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for lang in langs:
        manifest = data_dir / lang / "test.jsonl"
        for n, row in enumerate(read_manifest(manifest)[:per_lang], start=1):
            name = f"{lang}-{n}.wav"
            shutil.copyfile(manifest.parent / row["audio"], out / name)
            rows.append({"audio": name, "text": row["text"], "lang": lang, "voice": row.get("voice", "")})
    path = out / "samples.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def cer_report(data_dir: Path, langs: list[str], split: str = "test", demo_dir: Path = DEMO_DIR) -> dict[str, dict]:
    """Per-language CER and WER of the bundled model on `<data_dir>/<lang>/<split>.jsonl`."""
    from chorus_training.adapter import transcribe_manifest

    report = {}
    for lang in langs:
        refs, hyps = transcribe_manifest(
            demo_dir / "backbone", data_dir / lang / f"{split}.jsonl", adapter_path(lang, demo_dir)
        )
        report[lang] = {
            "utterances": len(refs),
            "cer": round(error_rate(refs, hyps), 4),
            "wer": round(error_rate(refs, hyps, unit="word"), 4),
        }
    return report
