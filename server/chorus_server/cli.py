"""Server subcommands of the `chorus` command: `serve`, `dev …` and `train-adapter`.

The `chorus` command itself belongs to the client distribution (`chorus_client.cli`); this module is its plugin,
registered under the `chorus.commands` entry-point group in pyproject.toml. Nothing heavy is imported until a
command runs, so `chorus --help` starts without torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chorus_training.cli import add_commands as add_training_commands


def _random_model(args: argparse.Namespace) -> int:
    from chorus_server.engine.random_model import write_random_model

    paths = write_random_model(Path(args.out), args.preset, args.adapters, args.seed, args.layers)
    print(f"wrote {args.preset} backbone to {args.out} and {len(paths)} adapters to {Path(args.out) / 'adapters'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from chorus_server.app import create_app

    # One process: the inference thread owns the device; concurrency comes from batching, not from workers.
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


# = sorted(chorus_server.engine.random_model.PRESETS) (a test checks); named here so `chorus` starts without torch.
PRESET_NAMES = ("base", "base-mms", "large-mms", "tiny", "tiny-mms")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `serve`, `dev …` and `train-adapter` on the `chorus` parser's subcommands."""
    serve = commands.add_parser(
        "serve", help="run the HTTP server (settings from CHORUS_* environment variables or .env; see docs/server.md)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=_serve)
    dev = commands.add_parser("dev", help="developer tools").add_subparsers(dest="dev_command", required=True)
    rnd = dev.add_parser("random-model", help="write a random-weight backbone (HF layout) and random adapters")
    rnd.add_argument("--preset", choices=PRESET_NAMES, default="tiny", help="model geometry (default: tiny)")
    rnd.add_argument("--adapters", type=int, default=4, help="number of native adapters to write (default: 4)")
    rnd.add_argument("--layers", type=int, default=None, help="override the number of transformer layers")
    rnd.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    rnd.add_argument("--out", required=True, help="output directory")
    rnd.set_defaults(func=_random_model)
    add_training_commands(commands, dev)


def main(argv: list[str] | None = None) -> int:
    """`python -m chorus_server.cli …`: the `chorus` command with the server's subcommands, installed or not."""
    from chorus_client.cli import main as chorus_main

    return chorus_main(argv, plugins=[add_commands])


if __name__ == "__main__":
    sys.exit(main())
