"""Language-model decoding on the demo model: CER of greedy and beam decoding (with the demo LMs), decode time per
audio second, and beam search's share of a request's CPU time.

Needs a corpus from `chorus dev make-corpus` (valid and/or test splits). Made-up words (random letter strings
outside the lexicon, spoken by the test split's voices) are synthesized here with `--made-up N` utterances per
language. The model's logits are computed once per split and cached (`--cache`), so tuning runs decode only.

    chorus dev make-corpus --out /tmp/democorpus --train-minutes 0 --valid-minutes 3 --test-minutes 8
    python -m benchmarks.lm_decoding --corpus /tmp/democorpus --split test --made-up 40 [--out result.json]
    python -m benchmarks.lm_decoding --corpus /tmp/democorpus --split valid   # for tuning: the valid split only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from chorus_server.decoding.beam import decode
from chorus_server.decoding.options import DecodeRequest, LanguageModelFiles
from chorus_server.decoding.resources import demo_language_model
from chorus_server.engine import Engine
from chorus_server.engine.adapter_format import load_adapter
from chorus_server.engine.adapters import Adapter
from chorus_training.demo import DEMO_DIR, adapter_path
from chorus_training.manifest import error_rate, load_examples

LANGS = ("en", "fr", "de", "es", "it")


def _model(lang: str) -> tuple[Engine, Adapter]:
    loaded = Engine.from_pretrained(DEMO_DIR / "backbone", device="cpu", dtype="float32")
    path = adapter_path(lang)
    adapter = loaded.engine.prepare(load_adapter(path)) if path else loaded.default_adapter
    assert adapter is not None
    return loaded.engine, adapter


def _forward(engine: Engine, adapter: Adapter, audios: list[np.ndarray], batch: int = 16) -> list[torch.Tensor]:
    from chorus_server.engine.engine import pad_batch

    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(audios), batch):
            chunk = audios[start : start + batch]
            waveforms, lengths = pad_batch(chunk)
            out += [lg.float().clone() for lg in engine.forward(waveforms, lengths, [adapter] * len(chunk))]
    return out


def made_up_words(lang: str, count: int, seed: int = 0) -> list[str]:
    """Pronounceable letter strings (consonant-vowel pairs) that are not in the language's lexicon."""
    lexicon = set(demo_language_model(lang).lexicon.read_text(encoding="utf-8").split())  # type: ignore[union-attr]
    rng = np.random.default_rng([seed, sum(map(ord, lang))])
    consonants, vowels = "bcdfglmnprstvz", "aeiou"
    words: list[str] = []
    while len(words) < count:
        n = int(rng.integers(2, 5))
        word = "".join(consonants[rng.integers(len(consonants))] + vowels[rng.integers(len(vowels))] for _ in range(n))
        if word not in lexicon and word not in words:
            words.append(word)
    return words


def made_up_corpus(lang: str, utterances: int, split: str, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    """`utterances` of 2-7 made-up words in `split`'s voices (valid: for tuning; test: for the measurement),
    rendered as `make-corpus` renders."""
    from chorus_training.corpus import VARIANTS, partition, plan_utterance, render

    words = made_up_words(lang, 400, seed + (1 if split == "valid" else 0))
    variants = partition(VARIANTS, salt=f"voices-{seed}")[split]
    plans = [plan_utterance(i, words, variants, lang, seed + 7919) for i in range(utterances)]
    return [p.text for p in plans], [render(p).astype(np.float32) for p in plans]


def logits_for(corpus: Path, lang: str, split: str, cache: Path, made_up: int) -> dict:
    """{"refs", "logits", "tokens", "blank", "delimiter", "audio_seconds"} of a split (`made-up`: the synthesized
    made-up words), cached in `cache`."""
    path = cache / f"{lang}-{split}.pt"
    if path.is_file():
        return torch.load(path)
    engine, adapter = _model(lang)
    if split.startswith("made-up"):  # made-up (test voices) or made-up-valid
        refs, audios = made_up_corpus(lang, made_up, "valid" if split.endswith("valid") else "test")
    else:
        examples = load_examples(corpus / lang / f"{split}.jsonl")
        refs, audios = [e.text for e in examples], [e.audio.astype(np.float32) / 32768.0 for e in examples]
    vocab = adapter.vocab
    saved = {
        "refs": refs,
        "logits": _forward(engine, adapter, audios),
        "tokens": list(vocab.tokens),
        "blank": vocab.blank_id,
        "delimiter": vocab.word_delimiter_id,
        "audio_seconds": sum(a.size for a in audios) / 16000,
    }
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return saved


def evaluate(data: dict, files: LanguageModelFiles | None, request: DecodeRequest) -> dict:
    """CER of `request`'s decoder over a split's cached logits, and its decode time per audio second."""
    from chorus_server.engine.adapters import Vocabulary

    vocab = Vocabulary(tuple(data["tokens"]), data["blank"], data["delimiter"])
    if files is not None and request.decoder != "greedy":
        decode(data["logits"][0], vocab, files, request)  # builds the trie once, outside the timing
    started = time.process_time()
    hyps = [decode(lg, vocab, files, request).text for lg in data["logits"]]
    seconds = time.process_time() - started
    return {
        "cer": round(error_rate(data["refs"], hyps), 4),
        "wer": round(error_rate(data["refs"], hyps, unit="word"), 4),
        "decode_ms_per_audio_s": round(1000 * seconds / data["audio_seconds"], 2),
    }


def hotwords(data: dict, files: LanguageModelFiles | None, distractors: int = 4, seed: int = 0) -> dict:
    """Each utterance's longest word as the prompt's hotword (with `distractors` words of other utterances): how
    often it comes out spelled right without and with the prompt, and the CER both ways."""
    from chorus_server.engine.adapters import Vocabulary

    vocab = Vocabulary(tuple(data["tokens"]), data["blank"], data["delimiter"])
    rng = np.random.default_rng(seed)
    pool = sorted({w for ref in data["refs"] for w in ref.split() if len(w) >= 3})
    hits = {"without": 0, "with": 0}
    hyps: dict[str, list[str]] = {"without": [], "with": []}
    for ref, logits in zip(data["refs"], data["logits"], strict=True):
        target = max(ref.split(), key=len)
        others = [w for w in rng.choice(pool, distractors + 1, replace=False) if w not in ref.split()][:distractors]
        for name, prompt in (("without", ()), ("with", (" ".join([*others, target]),))):
            text = decode(logits, vocab, files, DecodeRequest("beam", prompt)).text
            hyps[name].append(text)
            hits[name] += target in text.lower().split()
    n = len(data["refs"])
    return {
        "hotword_found_without_prompt": round(hits["without"] / n, 3),
        "hotword_found_with_prompt": round(hits["with"] / n, 3),
        "cer_without_prompt": round(error_rate(data["refs"], hyps["without"]), 4),
        "cer_with_prompt": round(error_rate(data["refs"], hyps["with"]), 4),
    }


def forward_cpu_ms_per_audio_s(lang: str, corpus: Path, split: str, count: int = 20) -> float:
    """CPU time of the model's forward pass per audio second (one thread), on `count` utterances of a split."""
    engine, adapter = _model(lang)
    examples = load_examples(corpus / lang / f"{split}.jsonl", limit=count)
    audios = [e.audio.astype(np.float32) / 32768.0 for e in examples]
    _forward(engine, adapter, audios[:2], batch=1)  # warm-up
    started = time.process_time()
    _forward(engine, adapter, audios, batch=1)
    return 1000 * (time.process_time() - started) / (sum(a.size for a in audios) / 16000)


def run(corpus: Path, split: str, langs: list[str], cache: Path, made_up: int) -> dict:
    report: dict = {}
    for lang in langs:
        files = demo_language_model(lang)
        row: dict = {}
        for name, part in ((split, split), ("made-up", "made-up" if split == "test" else "made-up-valid")):
            data = logits_for(corpus, lang, part, cache, made_up)
            row[name] = {
                "utterances": len(data["refs"]),
                "audio_s": round(data["audio_seconds"], 1),
                "greedy": evaluate(data, files, DecodeRequest("greedy")),
                "beam": evaluate(data, files, DecodeRequest("beam")),
            }
        made_up_part = "made-up" if split == "test" else "made-up-valid"
        row["hotwords"] = {
            name: hotwords(logits_for(corpus, lang, part, cache, made_up), files)
            for name, part in ((split, split), ("made-up", made_up_part))
        }
        forward = forward_cpu_ms_per_audio_s(lang, corpus, split)
        beam_ms = row[split]["beam"]["decode_ms_per_audio_s"]
        row["forward_ms_per_audio_s"] = round(forward, 2)
        row["beam_share_of_cpu"] = round(beam_ms / (beam_ms + forward), 4)
        report[lang] = row
        print(lang, json.dumps(row), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="make-corpus output directory")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--langs", default=",".join(LANGS))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/chorus-lm-logits"), help="cached logits")
    parser.add_argument("--made-up", type=int, default=40, help="made-up-word utterances per language")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # CPU times per audio second on one core, for forward and decode alike
    report = run(args.corpus, args.split, args.langs.split(","), args.cache, args.made_up)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
