"""What `model=auto` costs in one backbone pass against two, through the server (docs/benchmarks.md).

    python -m benchmarks.one_pass_routing [--data data/lid] [--count 60] [--out .bench/one_pass.json]

An in-process server on the demo backbone with a placement that allows one pass: five top-3 transcription adapters
(bottlenecks r=64 in layers 3-5, like the demo's language adapters but only in the top half; random weights) and a
language-ID adapter that mixes states 0-3 only (random weights: what is measured is time, not accuracy). The same
utterances are posted three ways in one run, interleaved: naming the adapter the detector picks, `model=auto` in
one pass, and `model=auto` forced to two passes (`CHORUS_ROUTING__ONE_PASS_MAX_CANDIDATES=0`, a second server in
the same process). Reported: seconds per request of each and their ratios, and that one-pass transcripts equal the
named adapter's. Audio: `<data>/<lang>/test.jsonl` utterances when present, else 2-6 s test tones.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

LANGS = ("en", "fr", "de", "es", "it")


def clips(data: Path, count: int) -> list[bytes]:
    import numpy as np

    from tests.server.conftest import encode, tone

    found = []
    for lang in LANGS:
        manifest = data / lang / "test.jsonl"
        if manifest.is_file():
            rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
            found += [(manifest.parent / row["audio"]).read_bytes() for row in rows[: count // len(LANGS)]]
    if found:
        return found[:count]
    rng = np.random.default_rng(0)
    return [encode(tone(float(rng.uniform(2, 6)), seed=k)) for k in range(count)]


def write_adapters(folder: Path) -> list[Path]:
    from chorus_server.demo_model import DEMO_DIR
    from chorus_server.engine import Engine, save_adapter
    from chorus_server.engine.random_model import random_adapter, random_classifier

    engine = Engine.from_pretrained(DEMO_DIR / "backbone", device="cpu").engine
    config, fp = engine.config, engine.fingerprint
    top = list(range(config.num_hidden_layers - 3, config.num_hidden_layers))
    adapters = [
        random_adapter(config, "houlsby", f"top-{lang}", 64, top, 30, 10 + k, fp) for k, lang in enumerate(LANGS)
    ]
    adapters.append(
        random_classifier(config, "lid-low", list(LANGS), 0, [], 5, fp, 0, (), True, "attentive", top[0] + 1)
    )
    paths = []
    for adapter in adapters:
        paths.append(folder / f"{adapter.name}.safetensors")
        save_adapter(adapter, paths[-1])
    return paths


def measure(data: Path, count: int) -> dict:
    from tests.server.conftest import make_settings, running_app, transcribe

    audio = clips(data, count)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_adapters(root)
        routing = {"language_adapter": "lid-low", "languages": {lang: f"top-{lang}" for lang in LANGS}}
        one = make_settings(root / "one", None, routing=routing)  # type: ignore[arg-type]
        two = make_settings(root / "two", None, routing={**routing, "one_pass_max_candidates": 0})  # type: ignore[arg-type]
        seconds = {"named": 0.0, "auto_one_pass": 0.0, "auto_two_passes": 0.0}
        same_text = 0
        with running_app(one, files) as a, running_app(two, files) as b:
            for clip in audio[:2]:  # warm both servers
                transcribe(a, clip, "auto"), transcribe(b, clip, "auto")
            for clip in audio:
                started = time.perf_counter()
                routed = transcribe(a, clip, "auto")
                seconds["auto_one_pass"] += time.perf_counter() - started
                adapter = routed.headers["x-chorus-adapter"].split("@")[0]
                started = time.perf_counter()
                named = transcribe(a, clip, adapter)
                seconds["named"] += time.perf_counter() - started
                started = time.perf_counter()
                transcribe(b, clip, "auto")
                seconds["auto_two_passes"] += time.perf_counter() - started
                same_text += routed.json()["text"] == named.json()["text"]
            passes = [
                line for line in a.get("/metrics").text.splitlines() if line.startswith("chorus_auto_routes_total")
            ]
    per = {k: round(v / len(audio), 4) for k, v in seconds.items()}
    return {
        "requests": len(audio),
        "seconds_per_request": per,
        "one_pass_vs_named": round(per["auto_one_pass"] / per["named"], 3),
        "two_passes_vs_named": round(per["auto_two_passes"] / per["named"], 3),
        "one_pass_transcript_equals_named": f"{same_text}/{len(audio)}",
        "routes_metric": passes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/lid", help="a make-corpus corpus (default: data/lid; else tones)")
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--out", default=".bench/one_pass.json")
    args = parser.parse_args()
    result = measure(Path(args.data), args.count)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
