"""model=auto with the demo model, measured on held-out speech (docs/demo-model.md, "Classifier adapters").

    python -m benchmarks.auto_route_eval --data data/lid [--split test] [--out .bench/auto_route.json]

Every utterance of `<data>/<lang>/<split>.jsonl` (a `chorus dev make-corpus` corpus: words and voices the
language-ID adapter never heard) is posted to an in-process server on the demo model (first-start seeding:
`chorus/lid` and the language adapters) with `model=auto`; the `x-chorus-language` and `x-chorus-adapter` headers
are compared with the utterance's language and its adapter. Also: the same files with `model=<lang>` named, to
report what detection costs in time (two passes over the detected audio).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

LANGS = ("en", "fr", "de", "es", "it")


def evaluate(data: Path, split: str, limit: int | None) -> dict:
    from tests.server.conftest import make_settings, running_app, transcribe

    rows = []
    for lang in LANGS:
        manifest = data / lang / f"{split}.jsonl"
        for line in manifest.read_text(encoding="utf-8").splitlines()[:limit]:
            row = json.loads(line)
            rows.append((lang, (manifest.parent / row["audio"]).read_bytes()))
    confusion: Counter[tuple[str, str]] = Counter()
    right_adapter = 0
    auto_seconds = named_seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp, running_app(make_settings(Path(tmp), None, vad={"enabled": True})) as c:  # type: ignore[arg-type]
        for lang, audio in rows:
            started = time.perf_counter()
            response = transcribe(c, audio, "auto")
            auto_seconds += time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"model=auto answered {response.status_code}: {response.text}")
            detected = response.headers["x-chorus-language"]
            confusion[(lang, detected)] += 1
            right_adapter += response.headers["x-chorus-adapter"].startswith(f"chorus/{lang}@")
            started = time.perf_counter()
            transcribe(c, audio, lang)
            named_seconds += time.perf_counter() - started
    total = len(rows)
    per_language = {
        lang: round(confusion[(lang, lang)] / max(1, sum(n for (a, _), n in confusion.items() if a == lang)), 4)
        for lang in LANGS
    }
    return {
        "utterances": total,
        "right_language": round(sum(n for (a, b), n in confusion.items() if a == b) / total, 4),
        "right_adapter": round(right_adapter / total, 4),
        "per_language": per_language,
        "confusions": {f"{a}->{b}": n for (a, b), n in sorted(confusion.items()) if a != b},
        "seconds_per_request_auto": round(auto_seconds / total, 4),
        "seconds_per_request_named": round(named_seconds / total, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="corpus directory (chorus dev make-corpus --out)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--limit", type=int, default=None, help="utterances per language (default: all)")
    p.add_argument("--out", type=Path, default=Path(".bench/auto_route.json"))
    args = p.parse_args()
    result = evaluate(args.data, args.split, args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
