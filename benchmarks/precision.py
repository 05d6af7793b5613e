"""bf16 vs fp32 transcripts on the bundled demo model: are the CPU default's transcripts the fp32 ones?

Each sample `samples/<lang>-<n>.wav` runs through its language's adapter (`adapters/<lang>.safetensors`, else the
backbone's own head) in both precisions; the result is the character error rate of the bf16 transcript against
the fp32 one (target: equal, or within 0.5 points). Skipped, and said so, when no demo model is present.

    python -m benchmarks.precision [--demo server/chorus_server/demo_model] [--out result.json]
"""

from __future__ import annotations

from pathlib import Path

import soundfile
import soxr

from benchmarks.backbone_speed import cer
from benchmarks.common import device_of, finish, parser
from chorus_server.engine import Engine, load_adapter
from chorus_server.runtime import DEMO_DIR


def _shown(path: Path) -> str:
    """The path as the report shows it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def transcripts(demo: Path, dtype: str, device: str, limit: int | None) -> dict[str, str]:
    loaded = Engine.from_pretrained(demo / "backbone", device=device, dtype=dtype)
    engine, texts = loaded.engine, {}
    for wav in sorted((demo / "samples").glob("*.wav"))[:limit]:
        lang = wav.stem.split("-")[0]
        file = demo / "adapters" / f"{lang}.safetensors"
        adapter = engine.prepare(load_adapter(file)) if file.is_file() else loaded.default_adapter
        if adapter is None:
            continue
        audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != engine.preprocess.sampling_rate:
            audio = soxr.resample(audio, rate, engine.preprocess.sampling_rate)
        texts[wav.stem] = engine.transcribe([audio], [adapter])[0].text
    return texts


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--demo", type=Path, default=DEMO_DIR, help="demo model directory (backbone/, adapters/, samples/)")
    args = p.parse_args()
    if not (args.demo / "backbone" / "config.json").is_file():
        finish("precision", args, {"skipped": f"no demo model at {args.demo}"})
        return
    device = str(device_of(args))
    limit = 2 if args.quick else None
    fp32, bf16 = (transcripts(args.demo, dtype, device, limit) for dtype in ("float32", "bfloat16"))
    ref_chars = sum(len(t) for t in fp32.values())
    errors = sum(cer(fp32[k], bf16[k]) * max(1, len(fp32[k])) for k in fp32)
    finish(
        "precision",
        args,
        {
            "demo": _shown(args.demo),
            "samples": len(fp32),
            "identical": sum(fp32[k] == bf16[k] for k in fp32),
            "cer_bf16_vs_fp32": errors / max(1, ref_chars),
            "differences": {k: [fp32[k], bf16[k]] for k in fp32 if fp32[k] != bf16[k]},
        },
    )


if __name__ == "__main__":
    main()
