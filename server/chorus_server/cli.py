"""Server subcommands of the `chorus` command: `serve`, `keys …`, `dev …`, `train-adapter` and `train-classifier`.

The `chorus` command itself belongs to the client distribution (`chorus_client.cli`); this module is its plugin,
registered under the `chorus.commands` entry-point group in pyproject.toml. Nothing heavy is imported until a
command runs, so `chorus --help` starts without torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chorus_training.cli import add_commands as add_training_commands

if TYPE_CHECKING:
    from chorus_server.tenants.keys import KeyRing


def _random_model(args: argparse.Namespace) -> int:
    from chorus_server.engine.random_model import write_random_model

    paths = write_random_model(Path(args.out), args.preset, args.adapters, args.seed, args.layers)
    print(f"wrote {args.preset} backbone to {args.out} and {len(paths)} adapters to {Path(args.out) / 'adapters'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from chorus_server.audio_memory import limit_malloc_arenas

    limit_malloc_arenas()  # first, before the server's threads allocate (audio_memory.py says why)
    import uvicorn

    from chorus_server.app import create_app
    from chorus_server.connections import install_log_filter, raise_open_file_limit, uvicorn_options
    from chorus_server.exposure import exposure_problem
    from chorus_server.startup import StartupError, bind, check_paths, load_settings
    from chorus_server.tenants import open_tenant_store

    try:
        settings = load_settings()
        check_paths(settings)
        open_tenant_store(settings).close()  # a tenant database URL this build cannot use: say so now
    except StartupError as exc:
        print(f"chorus serve: {exc}", file=sys.stderr)
        return 2
    problem = exposure_problem(settings, args.host)
    if problem:
        print(f"chorus serve: {problem}", file=sys.stderr)
        return 2
    if args.ray:
        try:
            from chorus_server.cluster.app import run
        except ImportError:
            print("chorus serve: --ray needs Ray Serve: pip install 'chorus-asr[ray]'", file=sys.stderr)
            return 2
        if args.gpus_per_worker is not None:
            if args.gpus_per_worker < 0:
                print(
                    "chorus serve: --gpus-per-worker must be 0 or more (e.g. 1, or 0.5 to share a GPU)", file=sys.stderr
                )
                return 2
            settings.cluster.num_gpus = args.gpus_per_worker
        run(settings, args.host, args.port, args.workers, args.ray_address, args.ray_logs)
        return 0
    try:
        sock = bind(args.host, args.port)  # before the model loads: a busy port never logs "Chorus ready"
    except StartupError as exc:
        print(f"chorus serve: {exc}", file=sys.stderr)
        return 1
    open_files = raise_open_file_limit()
    if open_files < settings.server.max_connections + 64:
        print(
            f"chorus serve: warning: the open-file limit ({open_files}) is below CHORUS_SERVER__MAX_CONNECTIONS "
            f"({settings.server.max_connections}) + 64; raise it (ulimit -n) or lower the setting",
            file=sys.stderr,
        )
    install_log_filter()
    # One process: the inference thread owns the device; concurrency comes from batching, not from workers.
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        **uvicorn_options(settings.server, settings.realtime),
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def _keys(args: argparse.Namespace) -> int:
    """`chorus keys create|list|revoke`: each run is one audit entry by `cli:<OS user>`, refused or not."""
    from chorus_server.audit import AuditLog, audit_export
    from chorus_server.auth import env_keys
    from chorus_server.startup import StartupError, load_settings
    from chorus_server.tenants import open_tenant_store
    from chorus_server.tenants.base import DatabaseUnavailable

    try:
        settings = load_settings()
        tenants = open_tenant_store(settings)
    except StartupError as exc:
        print(f"chorus keys: {exc}", file=sys.stderr)
        return 2
    from chorus_server.tenants.keys import KeyRing

    keys = KeyRing(tenants, env_keys(settings.auth))  # = runtime.key_ring, without importing torch with the runtime
    target = {"create": getattr(args, "tenant", ""), "list": "*", "revoke": getattr(args, "key_id", "")}
    audit = AuditLog(tenants, audit_export(settings))
    try:
        with audit.local_action(f"key.{args.keys_command}", target[args.keys_command]) as entry:
            return _run_keys_command(args, keys, entry)
    except DatabaseUnavailable as exc:
        print(f"chorus keys: {exc}", file=sys.stderr)
        return 1
    finally:
        keys.close()
        tenants.close()


def _run_keys_command(args: argparse.Namespace, keys: KeyRing, entry: dict[str, Any]) -> int:
    import time

    from chorus_server.tenants.keys import Role
    from chorus_store.errors import AdapterRejected

    if args.keys_command == "create":
        expires = time.time() + args.expires_days * 86400 if args.expires_days else None
        entry["details"] = {"tenant": args.tenant, "role": args.role, "expires_at": expires}
        try:
            info, secret = keys.create(args.tenant, Role(args.role), expires)
        except AdapterRejected as exc:  # a bad tenant name
            entry["outcome"] = "invalid_tenant"
            print(f"chorus keys: {exc}", file=sys.stderr)
            return 2
        entry["details"]["key"] = info.id
        print(f"created {info.id} for tenant {info.tenant!r}, role {info.role} (shown once; store it now):")
        print(secret)
        return 0
    if args.keys_command == "list":
        for info in keys.active():
            expires = time.strftime("%Y-%m-%d", time.gmtime(info.expires_at)) if info.expires_at else "never"
            used = time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.last_used_at)) if info.last_used_at else "never"
            print(f"{info.id}  tenant={info.tenant}  role={info.role}  {info.source}  expires={expires}  used={used}")
        return 0
    if keys.revoke(args.key_id):
        print(f"revoked {args.key_id}")
        return 0
    entry["outcome"] = "key_not_found"  # the same code the API answers
    print(f"chorus keys: no active key {args.key_id!r} in {keys.store.describe()}", file=sys.stderr)
    return 1


# = sorted(chorus_server.engine.random_model.PRESETS) (a test checks); named here so `chorus` starts without torch.
PRESET_NAMES = ("base", "base-mms", "large-mms", "tiny", "tiny-mms")
ROLE_NAMES = ("admin", "operator", "user", "metrics")  # = chorus_server.tenants.base.Role (a test checks)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `serve`, `dev …`, `train-adapter` and `train-classifier` on the `chorus` parser's subcommands."""
    serve = commands.add_parser(
        "serve", help="run the HTTP server (settings from CHORUS_* environment variables or .env; see docs/server.md)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--ray", action="store_true", help="serve as a Ray Serve cluster (docs/scale-out.md)")
    serve.add_argument("--workers", type=int, default=2, help="--ray: worker replicas, one backbone each (default 2)")
    serve.add_argument("--ray-address", default=None, help="--ray: join this Ray cluster (default: start a local one)")
    serve.add_argument(
        "--ray-logs",
        choices=["file", "console"],
        default="file",
        help="--ray: where Ray's own log lines go (default: file, DATA_DIR/ray.log; the console shows Chorus's)",
    )
    serve.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="--ray: GPUs each worker asks Ray for, fractions allowed (default: CHORUS_CLUSTER__NUM_GPUS, else 1 "
        "when the cluster has GPUs, else 0)",
    )
    serve.set_defaults(func=_serve)
    keys = commands.add_parser(
        "keys", help="create, list and revoke API keys in the configured key file (no server needed)"
    ).add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; its secret is printed once, as the last line")
    create.add_argument("--tenant", required=True, help="tenant (namespace) the key acts for")
    create.add_argument("--role", choices=ROLE_NAMES, default="user", help="role (default: user)")
    create.add_argument("--expires-days", type=float, default=None, help="expire after N days (default: never)")
    keys.add_parser("list", help="list active keys (no secrets)")
    revoke = keys.add_parser("revoke", help="revoke a key; effective on the next request")
    revoke.add_argument("key_id", help="the key's ID (key_...)")
    for sub in (create, *keys.choices.values()):
        sub.set_defaults(func=_keys)
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
