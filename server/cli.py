"""The `chorus` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server.training.cli import add_commands as add_training_commands


def _random_model(args: argparse.Namespace) -> int:
    from server.engine.random_model import write_random_model

    paths = write_random_model(Path(args.out), args.preset, args.adapters, args.seed, args.layers)
    print(f"wrote {args.preset} backbone to {args.out} and {len(paths)} adapters to {Path(args.out) / 'adapters'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from server.engine.random_model import PRESETS

    parser = argparse.ArgumentParser(prog="chorus", description="Chorus multi-tenant speech recognition")
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="developer tools").add_subparsers(dest="dev_command", required=True)
    rnd = dev.add_parser("random-model", help="write a random-weight backbone (HF layout) and random adapters")
    rnd.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model geometry (default: tiny)")
    rnd.add_argument("--adapters", type=int, default=4, help="number of native adapters to write (default: 4)")
    rnd.add_argument("--layers", type=int, default=None, help="override the number of transformer layers")
    rnd.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    rnd.add_argument("--out", required=True, help="output directory")
    rnd.set_defaults(func=_random_model)
    add_training_commands(commands, dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
