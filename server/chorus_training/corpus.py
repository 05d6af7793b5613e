"""`chorus dev make-corpus`: labelled synthetic speech from espeak-ng and Debian word lists.

Each language gets `train`, `valid` and `test` splits that are disjoint in *words* and in espeak-ng *voice
variants* (or, for a speaker-ID corpus, `voices=[...]`: the same variants in every split, disjoint words): both
are assigned to a split by a salted hash, so the assignment is stable across runs and machines
and a model is always measured on words and voices it never heard. Utterances are 2-7 random words of the
split, spoken by a random variant of the split at a random rate and pitch, then lightly corrupted (reverb,
noise, gain; `synth.augment`). Output per language: `<out>/<lang>/<split>.jsonl` manifests (see
`manifest.py`) and 16 kHz 16-bit WAVs under `<out>/<lang>/<split>/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from chorus_training.synth import SAMPLE_RATE, Voice, augment, synthesize, trim_silence

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# Share of words and of voice variants in each split.
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


@dataclass(frozen=True)
class Language:
    espeak_voice: str
    word_list: str  # file under /usr/share/dict (Debian packages wamerican, wfrench, ...)
    keep_capitalized: bool = False  # German capitalises every noun; elsewhere capitals mark proper nouns


LANGUAGES: dict[str, Language] = {
    "en": Language("en-us", "american-english"),
    "fr": Language("fr", "french"),
    "de": Language("de", "ngerman", keep_capitalized=True),
    "es": Language("es", "spanish"),
    "it": Language("it", "italian"),
}

# espeak-ng 1.51 voice variants (`espeak-ng --voices=variant`), whispering ones left out. Listed here rather
# than queried so that the split is known without espeak-ng installed.
# fmt: off
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak", "klatt", "klatt2",
    "klatt3", "klatt4", "klatt5", "klatt6", "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty",
    "belinda", "benjamin", "boris", "caleb", "david", "Demonic", "Denis", "Diogo", "ed", "edward", "edward2",
    "Gene", "Gene2", "gustave", "announcer", "Henrique", "Hugo", "iven", "iven2", "iven3", "iven4", "Jacky", "john",
    "kaukovalta", "Lee", "linda", "marcelo", "Marco", "Mario", "max", "Michael", "michel", "miguel", "Mike", "Mr",
    "Nguyen", "pablo", "paul", "pedro", "quincy", "RicishayMax", "RicishayMax2", "RicishayMax3", "rob", "robert",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "steph",
    "steph2", "steph3", "Storm", "Tweaky", "UniRobot", "zac", "anika", "anikaRobot", "AnxiousAndy", "grandpa",
    "norbert", "sandro", "shelby", "travis", "victor", "grandma",
)
# fmt: on


def split_of(item: str, salt: str, fractions: dict[str, float] = SPLIT_FRACTIONS) -> str:
    """Stable split for `item`: a salted SHA-1 mapped to [0, 1) and cut at the cumulative fractions."""
    digest = hashlib.sha1(f"{salt}:{item}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in fractions.items():
        edge += fraction
        if u < edge:
            return name
    return list(fractions)[-1]


def partition(items: Iterable[str], salt: str) -> dict[str, list[str]]:
    """Items -> {split: sorted items}; every item lands in exactly one split."""
    parts: dict[str, list[str]] = {s: [] for s in SPLIT_FRACTIONS}
    for item in sorted(set(items)):
        parts[split_of(item, salt)].append(item)
    return parts


def clean_words(lines: Iterable[str], keep_capitalized: bool = False) -> list[str]:
    """Word-list lines -> lowercase alphabetic words of 2-14 letters (no apostrophes, hyphens, acronyms)."""
    words = set()
    for line in lines:
        word = line.strip()
        if not (2 <= len(word) <= 14) or not word.isalpha() or not word[1:].islower():
            continue
        if word[0].isupper() and not keep_capitalized:
            continue
        words.add(word.lower())
    return sorted(words)


def language_words(lang: str, dict_dir: Path = Path("/usr/share/dict")) -> list[str]:
    spec = LANGUAGES[lang]
    path = dict_dir / spec.word_list
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; install the word lists with tools/install-demo-deps.sh")
    words = clean_words(path.read_text(encoding="utf-8").splitlines(), spec.keep_capitalized)
    if lang == "en":
        words = [w for w in words if w.isascii()]
    return words


@dataclass(frozen=True)
class Utterance:
    index: int
    text: str
    voice: Voice
    augment_seed: int


def plan_utterance(index: int, words: Sequence[str], variants: Sequence[str], lang: str, seed: int) -> Utterance:
    """The `index`-th utterance of a split: its own RNG, so plans are reproducible and order-independent."""
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(2, 8))
    text = " ".join(words[int(i)] for i in rng.integers(0, len(words), count))
    variant = variants[int(rng.integers(0, len(variants)))]
    voice = Voice(LANGUAGES[lang].espeak_voice, variant, int(rng.integers(130, 201)), int(rng.integers(25, 76)))
    return Utterance(index, text, voice, int(rng.integers(0, 2**31)))


def render(utt: Utterance) -> np.ndarray:
    audio = trim_silence(synthesize(utt.text, utt.voice))
    return augment(audio, np.random.default_rng(utt.augment_seed))


def make_split(
    out: Path,
    lang: str,
    split: str,
    words: Sequence[str],
    variants: Sequence[str],
    minutes: float,
    seed: int,
    workers: int,
) -> Path:
    """Synthesize utterances until `minutes` of audio; write WAVs and `<out>/<lang>/<split>.jsonl`."""
    manifest = out / lang / f"{split}.jsonl"
    if manifest.is_file():
        logger.info("%s exists, skipping", manifest)
        return manifest
    (out / lang / split).mkdir(parents=True, exist_ok=True)
    split_seed = int.from_bytes(hashlib.sha1(f"{seed}:{lang}:{split}".encode()).digest()[:4], "big")
    rows: list[dict] = []
    total = 0.0
    index = 0
    with ThreadPoolExecutor(workers) as pool:
        while total < minutes * 60:
            plans = [plan_utterance(i, words, variants, lang, split_seed) for i in range(index, index + 64)]
            index += len(plans)
            for utt, audio in zip(plans, pool.map(render, plans), strict=True):
                if total >= minutes * 60:
                    break
                rel = f"{split}/{utt.index:06d}.wav"
                soundfile.write(out / lang / rel, audio, SAMPLE_RATE, subtype="PCM_16")
                duration = audio.size / SAMPLE_RATE
                total += duration
                rows.append(
                    {
                        "audio": rel,
                        "text": utt.text,
                        "lang": lang,
                        "voice": utt.voice.name,
                        "variant": utt.voice.variant,  # the speaker of a speaker-ID corpus
                        "rate": utt.voice.rate,
                        "pitch": utt.voice.pitch,
                        "duration": round(duration, 3),
                    }
                )
            logger.info("%s/%s: %d utterances, %.1f of %.1f min", lang, split, len(rows), total / 60, minutes)
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.rename(manifest)  # the manifest appears only once the split is complete (resume skips it)
    return manifest


def make_corpus(
    out: Path,
    langs: Sequence[str],
    minutes: dict[str, float],
    seed: int = 0,
    workers: int = 2,
    voices: Sequence[str] | None = None,
) -> list[Path]:
    """Write train/valid/test for each language; `minutes` per split. Returns the manifest paths.

    `voices`: speak every split with these variants (a speaker-ID corpus: splits disjoint in words only, each
    utterance's `voice` is its label); by default the variants are split like the words."""
    if voices is not None:
        unknown = sorted(set(voices) - set(VARIANTS))
        if unknown or not voices:
            raise ValueError(f"unknown voice variants {unknown}; expected some of {list(VARIANTS)}")
        shared = sorted(set(voices))
    by_split = partition(VARIANTS, salt=f"voices-{seed}") if voices is None else {s: shared for s in SPLITS}
    manifests = []
    for lang in langs:
        if lang not in LANGUAGES:
            raise ValueError(f"unknown language {lang!r}; expected one of {sorted(LANGUAGES)}")
        words = partition(language_words(lang), salt=f"words-{lang}-{seed}")
        for split in SPLITS:
            manifests.append(make_split(out, lang, split, words[split], by_split[split], minutes[split], seed, workers))
    return manifests
