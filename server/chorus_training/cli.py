"""Training commands of the `chorus` CLI: `train-adapter`, and the developer tools `dev make-corpus` and
`dev train-backbone` (used by `make demo-model`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _train_config(args: argparse.Namespace) -> Any:
    from chorus_training.loop import TrainConfig

    return TrainConfig(
        steps=args.steps,
        lr=args.lr,
        warmup_steps=min(args.warmup, max(1, args.steps // 5)),
        batch_seconds=args.batch_seconds,
        eval_every=args.eval_every,
        max_minutes=args.max_minutes,
        seed=args.seed,
    )


def _add_loop_options(parser: argparse.ArgumentParser, steps: int, lr: float, warmup: int) -> None:
    parser.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default: {steps})")
    parser.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default: {lr})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"warm-up steps (default: {warmup})")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="audio per batch (default: 60)")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between validations (default: 200)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this long; decay fits in it")
    parser.add_argument("--run-dir", default=None, help="state for resuming (default: <out>.run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _train_adapter(args: argparse.Namespace) -> int:
    import torch

    from chorus_training.adapter import AdapterSpec, test_cer, train_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    spec = AdapterSpec(
        args.lang,
        args.name or args.lang,
        args.bottleneck_dim,
        args.top_k,
        full_finetune=args.full_finetune,
        head_from_backbone=not args.fresh_head,
    )
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")
    result = train_adapter(
        Path(args.backbone), Path(args.train), Path(args.valid), spec, out, _train_config(args), run_dir
    )
    summary: dict[str, Any] = {
        "adapter": str(out),
        "valid_cer": round(result.valid_cer, 4),
        "trainable_parameters": result.trainable_parameters,
        "trainable_percent_of_backbone": round(result.trainable_percent, 2),
    }
    if args.lexicon and not args.full_finetune:
        from chorus_server.engine import load_adapter
        from chorus_training.lexicon import lexicon_path, write_lexicon

        lexicon = lexicon_path(out)
        summary["lexicon"] = str(lexicon)
        summary["lexicon_words"] = write_lexicon(Path(args.train), load_adapter(out).vocab, lexicon)
    if args.test and args.full_finetune:
        summary["test_cer"] = round(test_cer(out, Path(args.test)), 4)
    elif args.test:
        summary["test_cer"] = round(test_cer(Path(args.backbone), Path(args.test), out), 4)
    print(json.dumps(summary))
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from chorus_training.classifier import ClassifierSpec, accuracy, load_labelled, train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    train = load_labelled([Path(p) for p in args.manifest], args.label_field)
    if args.valid:
        valid = load_labelled([Path(p) for p in args.valid], args.label_field)
    else:  # hold out every tenth utterance, in a seeded order
        order = np.random.default_rng(args.seed).permutation(len(train))
        held = set(order[: max(1, len(train) // 10)].tolist())
        valid = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
    spec = ClassifierSpec(
        name=args.name or out.stem,
        task=args.task,
        bottleneck_dim=args.bottleneck_dim,
        top_k=args.top_k,
        cnn_adapters=args.cnn_adapters,
        cnn_dim=args.cnn_dim,
        pooling=args.pooling,
        num_states=args.mix_states,
    )
    init = Path(args.init) if args.init else None
    config = _train_config(args)
    result = train_classifier(
        Path(args.backbone), train, valid, spec, out, config, init, args.speed_perturb, args.crop_seconds
    )
    summary: dict[str, Any] = {
        "adapter": str(out),
        "labels": list(result.labels),
        "valid_accuracy": round(result.valid_accuracy, 4),
        "trainable_parameters": result.trainable_parameters,
        "trainable_percent_of_backbone": round(result.trainable_percent, 2),
        "steps": result.steps,
        "minutes": round(result.minutes, 1),
    }
    if args.test:
        test = load_labelled([Path(p) for p in args.test], args.label_field)
        summary["test_accuracy"] = round(accuracy(Path(args.backbone), out, test), 4)
        summary["test_utterances"] = len(test)
    print(json.dumps(summary))
    return 0


def _make_corpus(args: argparse.Namespace) -> int:
    from chorus_training.corpus import make_corpus

    minutes = {"train": args.train_minutes, "valid": args.valid_minutes, "test": args.test_minutes}
    voices = args.voices.split(",") if args.voices else None
    paths = make_corpus(Path(args.out), args.langs.split(","), minutes, args.seed, args.workers, voices)
    print("\n".join(str(p) for p in paths))
    return 0


def _train_backbone(args: argparse.Namespace) -> int:
    from chorus_training.backbone import train_backbone

    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")
    init = Path(args.init) if args.init else None
    best = train_backbone(
        Path(args.train), Path(args.valid), out, _train_config(args), run_dir, threads=args.threads, init=init
    )
    print(json.dumps({"backbone": str(out), "valid_cer": round(best, 4)}))
    return 0


def _demo_samples(args: argparse.Namespace) -> int:
    from chorus_training.demo import DEMO_DIR, export_samples

    print(export_samples(Path(args.data), args.langs.split(","), args.per_lang, DEMO_DIR / "samples"))
    return 0


def _make_lm(args: argparse.Namespace) -> int:
    from chorus_server.decoding.resources import DEMO_LM_DIR
    from chorus_training.lm import demo_alphabet, make_lm

    for lang in args.langs.split(","):
        print(make_lm(lang, demo_alphabet(lang), Path(args.out) if args.out else DEMO_LM_DIR))
    return 0


def _demo_report(args: argparse.Namespace) -> int:
    from chorus_training.demo import cer_report

    print(json.dumps(cer_report(Path(args.data), args.langs.split(","), args.split), indent=1))
    return 0


def add_commands(commands: Any, dev: Any) -> None:
    """Register `train-adapter` on the top-level subparsers and the corpus/backbone tools on `dev`'s."""
    ta = commands.add_parser(
        "train-adapter",
        help="train a language adapter on a frozen backbone from JSONL manifests",
        description="Seed-paper adapters (bottlenecks after attention and feed-forward, in every layer or the top "
        "K) plus a new CTC head whose vocabulary is built from the training transcripts. The backbone stays "
        "frozen; the best weights by validation CER are written as a native adapter file. Manifest lines: "
        '{"audio": "path.wav", "text": "..."}, audio paths relative to the manifest.',
    )
    ta.add_argument("--backbone", required=True, help="backbone directory (HF layout)")
    ta.add_argument("--train", required=True, help="training manifest (JSONL)")
    ta.add_argument("--valid", required=True, help="validation manifest (JSONL)")
    ta.add_argument("--test", default=None, help="optional test manifest: report its CER at the end")
    ta.add_argument("--lang", required=True, help="language code stored in the adapter, e.g. fr")
    ta.add_argument("--name", default=None, help="adapter name (default: the language)")
    ta.add_argument("--out", required=True, help="adapter file to write (.safetensors)")
    ta.add_argument("--bottleneck-dim", type=int, default=64, help="bottleneck size (default: 64)")
    ta.add_argument("--top-k", type=int, default=None, help="adapters in the top K layers only (default: all)")
    ta.add_argument(
        "--fresh-head",
        action="store_true",
        help="random CTC head; by default rows of tokens the backbone's own head has start from it",
    )
    ta.add_argument(
        "--full-finetune",
        action="store_true",
        help="baseline: train the whole transformer and a new head instead; --out is then a model directory",
    )
    ta.add_argument(
        "--lexicon",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the training transcripts' words beside the adapter, <out stem>.lexicon.txt, for "
        "`chorus adapters upload --lexicon` (default: on; not with --full-finetune)",
    )
    _add_loop_options(ta, steps=1500, lr=2e-3, warmup=100)
    ta.set_defaults(func=_train_adapter)

    tc = commands.add_parser(
        "train-classifier",
        help="train an utterance classifier adapter (language ID, speaker ID, ...) on a frozen backbone",
        description="A learned mix of the backbone's hidden states, mean-pooled over the utterance, then a linear "
        "head over the labels (SUPERB); optionally bottlenecks in the top K transformer layers (--bottleneck-dim) "
        "and CHAPTER CNN adapters in the conv front end (--cnn-adapters). The backbone stays frozen; the best "
        "weights by validation accuracy are written as a native adapter file. Manifest lines: "
        '{"audio": "path.wav", "label": "fr"}, audio paths relative to the manifest.',
    )
    tc.add_argument("--backbone", required=True, help="backbone directory (HF layout)")
    tc.add_argument("--manifest", required=True, action="append", help="training manifest (JSONL); repeatable")
    tc.add_argument("--valid", action="append", help="validation manifest; repeatable (default: a tenth of train)")
    tc.add_argument("--test", action="append", help="test manifest: report its accuracy at the end; repeatable")
    tc.add_argument("--label-field", default="label", help="manifest field holding the label (default: label)")
    tc.add_argument("--out", required=True, help="adapter file to write (.safetensors)")
    tc.add_argument("--name", default=None, help="adapter name (default: the file's stem)")
    tc.add_argument("--task", default="classify", help="task stored in the adapter, e.g. language-id")
    tc.add_argument(
        "--bottleneck-dim", type=int, default=0, help="bottlenecks in the transformer of this size (default: none)"
    )
    tc.add_argument("--top-k", type=int, default=None, help="bottlenecks in the top K layers only (default: all)")
    tc.add_argument("--cnn-adapters", action="store_true", help="CHAPTER CNN adapters after every conv layer")
    tc.add_argument("--cnn-dim", type=int, default=16, help="CNN adapter bottleneck size (default: 16)")
    tc.add_argument(
        "--pooling", choices=["mean", "attentive"], default="mean", help="over the utterance's frames (default: mean)"
    )
    tc.add_argument(
        "--mix-states",
        type=int,
        default=None,
        help="mix only the first N hidden states (input + layers 0..N-2); without adapters of its own, a language-ID "
        "classifier that model=auto runs inside the transcription's pass (default: all)",
    )
    tc.add_argument(
        "--speed-perturb", type=float, default=0.0, help="train at random speeds within ±this, e.g. 0.1 (default: 0)"
    )
    tc.add_argument(
        "--crop-seconds",
        type=float,
        default=0.0,
        help="train half the utterances as random windows at least this long, e.g. 1.0 (default: 0, whole)",
    )
    tc.add_argument("--init", default=None, help="continue from this classifier file (same labels)")
    _add_loop_options(tc, steps=1000, lr=1e-3, warmup=50)
    tc.set_defaults(func=_train_classifier)

    mc = dev.add_parser("make-corpus", help="synthesize a labelled multilingual corpus with espeak-ng")
    mc.add_argument("--out", required=True, help="output directory")
    mc.add_argument("--langs", default="en,fr,de,es,it", help="comma-separated languages (default: en,fr,de,es,it)")
    mc.add_argument("--train-minutes", type=float, default=60.0, help="training audio per language (default: 60)")
    mc.add_argument("--valid-minutes", type=float, default=8.0, help="validation audio per language (default: 8)")
    mc.add_argument("--test-minutes", type=float, default=8.0, help="test audio per language (default: 8)")
    mc.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes (default: 2)")
    mc.add_argument("--seed", type=int, default=0, help="seed of the word/voice split and the sampling")
    mc.add_argument(
        "--voices",
        default=None,
        help="comma-separated voice variants spoken in every split (a speaker-ID corpus; default: variants are "
        "split like the words)",
    )
    mc.set_defaults(func=_make_corpus)

    tb = dev.add_parser("train-backbone", help="train the demo wav2vec 2.0 backbone from scratch with CTC")
    tb.add_argument("--train", required=True, help="training manifest (JSONL)")
    tb.add_argument("--valid", required=True, help="validation manifest (JSONL)")
    tb.add_argument("--out", required=True, help="HF-layout output directory (best weights, fp16)")
    tb.add_argument(
        "--init",
        default=None,
        help="continue from the weights of this HF-layout directory (an earlier --out, e.g. the shipped backbone)",
    )
    _add_loop_options(tb, steps=20000, lr=1.5e-3, warmup=150)
    tb.set_defaults(func=_train_backbone)

    ds = dev.add_parser("demo-samples", help="copy test-split utterances into server/chorus_server/demo_model/samples/")
    ds.add_argument("--data", required=True, help="corpus directory (make-corpus --out)")
    ds.add_argument("--langs", default="en,fr,de,es,it", help="languages (default: en,fr,de,es,it)")
    ds.add_argument("--per-lang", type=int, default=3, help="utterances per language (default: 3)")
    ds.set_defaults(func=_demo_samples)

    ml = dev.add_parser("make-lm", help="write a lexicon and a unigram ARPA model per language from its word list")
    ml.add_argument("--out", default=None, help="output directory (default: the bundled demo model's lm/)")
    ml.add_argument("--langs", default="en,fr,de,es,it", help="comma-separated languages (default: en,fr,de,es,it)")
    ml.set_defaults(func=_make_lm)

    dr = dev.add_parser("demo-report", help="CER/WER of the bundled demo model on a corpus split")
    dr.add_argument("--data", required=True, help="corpus directory (make-corpus --out)")
    dr.add_argument("--langs", default="en,fr,de,es,it", help="languages (default: en,fr,de,es,it)")
    dr.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split (default: test)")
    dr.set_defaults(func=_demo_report)
