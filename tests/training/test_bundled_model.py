"""The bundled demo model really transcribes: CER on the shipped samples (test-split words and voices)."""

from __future__ import annotations

import json

import pytest

from chorus_server.engine import Engine, load_adapter, pad_batch
from chorus_server.engine.adapter_format import read_adapter_file
from chorus_training.demo import DEMO_DIR, adapter_path
from chorus_training.manifest import error_rate, load_audio

# Per-language CER bounds on the shipped samples (5 test-split utterances each). The project's targets are 0.05
# (en) and 0.10 (adapters); the shipped model reaches the adapter target for Italian only. These bounds are its
# measured test-split CER (MODEL_CARD.md: en 0.150, fr 0.329, de 0.159, es 0.146, it 0.081) plus about 0.1 for
# the few samples, so the test catches a broken model or pipeline (random output scores about 1.0). Tighten them
# with a better model.
MAX_CER = {"en": 0.25, "fr": 0.43, "de": 0.26, "es": 0.25, "it": 0.18}
MAX_BYTES = 40 * 1024 * 1024
CLASSIFIERS = ("lid", "speakers")  # language ID over MAX_CER's languages; speaker ID over 20 espeak-ng voices


@pytest.fixture(scope="module")
def loaded():
    return Engine.from_pretrained(DEMO_DIR / "backbone", device="cpu", dtype="float32")


def samples() -> list[dict]:
    path = DEMO_DIR / "samples" / "samples.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("lang", sorted(MAX_CER))
def test_transcribes_samples(loaded, lang: str) -> None:
    rows = [r for r in samples() if r["lang"] == lang]
    assert len(rows) >= 2, f"no samples for {lang}"
    path = adapter_path(lang)
    adapter = loaded.default_adapter if path is None else loaded.engine.prepare(load_adapter(path))
    audios = [load_audio(DEMO_DIR / "samples" / r["audio"]) for r in rows]
    texts = [t.text for t in loaded.engine.transcribe(audios, [adapter] * len(audios))]
    cer = error_rate([r["text"] for r in rows], texts)
    assert cer <= MAX_CER[lang], f"{lang}: CER {cer:.3f}\n" + "\n".join(
        f"  ref {r['text']!r}\n  hyp {t!r}" for r, t in zip(rows, texts, strict=True)
    )


def test_adapters_are_small_and_match_the_backbone(loaded) -> None:
    backbone_params = sum(p.numel() for p in loaded.engine.backbone.parameters())
    paths = sorted((DEMO_DIR / "adapters").glob("*.safetensors"))
    kinds = {path.stem: load_adapter(path).info.kind for path in paths}
    assert kinds == {**dict.fromkeys(["de", "es", "fr", "it"], "houlsby"), **dict.fromkeys(CLASSIFIERS, "classifier")}
    for path in paths:
        adapter = loaded.engine.prepare(load_adapter(path))  # raises on a fingerprint mismatch
        assert adapter.num_parameters() <= 0.10 * backbone_params, path.name
        assert read_adapter_file(path)[0]["backbone_fingerprint"] == loaded.engine.fingerprint


def test_language_id_recognises_the_samples(loaded) -> None:
    """The shipped samples are test-split utterances (words and voices `lid` never heard)."""
    lid = loaded.engine.prepare(load_adapter(DEMO_DIR / "adapters" / "lid.safetensors"))
    assert sorted(lid.labels) == sorted(MAX_CER)
    rows = samples()
    audios = [load_audio(DEMO_DIR / "samples" / r["audio"]) for r in rows]
    logits = loaded.engine.forward(*pad_batch(audios), [lid] * len(rows))
    predicted = [lid.labels[int(row.argmax())] for row in logits]
    wrong = [(r["audio"], p) for r, p in zip(rows, predicted, strict=True) if p != r["lang"]]
    assert len(wrong) <= 1, wrong


def test_total_size() -> None:
    total = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"demo model is {total / 2**20:.1f} MiB"
