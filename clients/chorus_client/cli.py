"""The `chorus` command: `transcribe`, `classify` and `adapters ...` against a local or remote server, plus whatever
installed plugins add (the server distribution adds `serve`, `dev …`, `train-adapter` and `train-classifier` through the
`chorus.commands` entry-point group). Nothing here imports torch; `adapters import-mms` converts the MMS file
locally with the server package, and says so when only the client is installed.

Exit codes are part of the interface (scripts branch on them): `EXIT_CODES` below, docs/clients.md, and the
epilog of every command's `--help`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

from chorus_client import errors
from chorus_client._core import BEAM_SETTINGS, FileResult, audio_files
from chorus_client.client import Chorus
from chorus_client.models import Adapter, Classification, Transcription

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REJECTED = 4
EXIT_AUTH = 5
EXIT_UNAVAILABLE = 6
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILURE: "unexpected failure",
    EXIT_USAGE: "bad command line (argparse's convention)",
    EXIT_NOT_FOUND: "adapter, version or local file not found (404)",
    EXIT_REJECTED: "rejected: bad audio, parameters or adapter file, too large, version conflict (400/409/413/415/422)",
    EXIT_AUTH: "missing/unknown API key or not allowed (401/403)",
    EXIT_UNAVAILABLE: "server unreachable, overloaded, rate limited, timed out or failing (429/5xx, after retries)",
}

SUFFIXES = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt"}


FILE_NOT_FOUND = "file_not_found"  # the code of a local file that is not there (its run goes on without it)


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, errors.NotFoundError | FileNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, errors.ChorusError) and exc.code == FILE_NOT_FOUND:
        return EXIT_NOT_FOUND
    if isinstance(exc, errors.InvalidRequestError | errors.ConflictError | ValueError):
        return EXIT_REJECTED
    if isinstance(exc, errors.AuthenticationError | errors.PermissionDeniedError):
        return EXIT_AUTH
    if isinstance(exc, errors.APIConnectionError | errors.APIError):
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `transcribe` and `adapters` on the `chorus` parser's subcommands."""
    conn = argparse.ArgumentParser(add_help=False)
    group = conn.add_argument_group("server")
    group.add_argument("--url", help="server URL (default: $CHORUS_URL, else http://127.0.0.1:8000)")
    group.add_argument("--api-key", help="API key (default: $CHORUS_API_KEY)")
    group.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    epilog = "exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
    kw: dict[str, Any] = {"parents": [conn], "epilog": epilog}

    tr = commands.add_parser("transcribe", help="transcribe audio files or folders", **kw)
    tr.add_argument("files", nargs="+", metavar="FILE", help="audio files; folders expand to the audio inside")
    tr.add_argument("--adapter", "-a", required=True, help="adapter ID or ID@N; auto: the detected language's")
    tr.add_argument("--format", choices=list(SUFFIXES), default="text", help="output format (default: text)")
    tr.add_argument("--out", type=Path, help="write one file per input into this folder instead of stdout")
    tr.add_argument("--word-timestamps", action="store_true", help="ask for word timings (json, verbose_json)")
    tr.add_argument("--language", help="with --adapter auto: the language, skipping detection")
    tr.add_argument(
        "--decoder", choices=["greedy", "beam"], help="beam: the adapter's language model (default: the adapter's)"
    )
    tr.add_argument("--prompt", help="words to boost when decoding with the language model (hotwords)")
    tr.add_argument("--concurrency", type=int, default=4, help="files in flight at once (default: 4)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a TTY)")
    tr.set_defaults(func=client_command(_transcribe))

    cl = commands.add_parser("classify", help="classify audio files with a classifier adapter (language, ...)", **kw)
    cl.add_argument("files", nargs="+", metavar="FILE", help="audio files; folders expand to the audio inside")
    cl.add_argument("--adapter", "-a", required=True, help="classifier adapter ID or ID@N")
    cl.add_argument("--top-k", type=int, help="print only the K most probable labels (default: all)")
    cl.set_defaults(func=client_command(_classify))

    adapters = commands.add_parser("adapters", help="list, inspect, upload and manage adapters")
    sub = adapters.add_subparsers(dest="adapters_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("list", help="adapters visible to this key", **kw)
    ls.add_argument("--page-size", type=int, help="adapters per request (default: the server's)")
    ls.set_defaults(func=client_command(_list))
    for name, helptext, func in (
        ("show", "one adapter's current version (ID) or a given version (ID@N)", _show),
        ("delete", "delete every version (ID) or one version (ID@N)", _delete),
        ("pin", "keep an adapter resident; returns once it is loaded", _pin),
        ("unpin", "let an adapter be evicted again", _unpin),
    ):
        cmd = sub.add_parser(name, help=helptext, **kw)
        cmd.add_argument("ref", metavar="ID[@N]")
        cmd.set_defaults(func=client_command(func))

    up = sub.add_parser("upload", help="publish a native adapter file as the next version of ID", **kw)
    up.add_argument("file", type=Path, help="adapter .safetensors file (Chorus native format)")
    _publish_options(up)
    dec = up.add_argument_group("decoding files, stored with the version (docs/adapter-format.md)")
    dec.add_argument("--lm", type=Path, help="n-gram language model: ARPA file or KenLM binary")
    dec.add_argument("--lexicon", type=Path, help="one word per line, spelled with the adapter's characters")
    dec.add_argument("--beam-width", type=int, help="beam search: hypotheses kept (default 32)")
    dec.add_argument("--lm-weight", type=float, help="weight of the language model's score (default 0.5)")
    dec.add_argument("--word-score", type=float, help="added per word (default -7)")
    dec.add_argument("--unk-score", type=float, help="score of a word outside the lexicon (default -4.5)")
    dec.add_argument("--unk-char-score", type=float, help="and per character of such a word (default -1.3)")
    dec.add_argument("--hotword-score", type=float, help="bonus for a word of a request's prompt (default 8)")
    dec.add_argument("--beam-threshold", type=float, help="drop hypotheses this far below the best (default 12)")
    dec.add_argument("--beam-tokens", type=int, help="tokens tried per frame, 0: all (default 8)")
    up.set_defaults(func=client_command(_upload))

    mms = sub.add_parser("import-mms", help="convert an MMS adapter.<lang>.safetensors locally, then upload it", **kw)
    mms.add_argument("file", type=Path, help="MMS adapter file, e.g. adapter.fra.safetensors")
    mms.add_argument("--vocab", type=Path, required=True, help="the model's vocab.json (nested by language)")
    mms.add_argument("--language", required=True, help="language code in vocab.json, e.g. fra")
    where = mms.add_mutually_exclusive_group()
    where.add_argument("--backbone", type=Path, help="local copy of the serving backbone (its fingerprint is used)")
    where.add_argument("--fingerprint", help="the serving backbone's fingerprint (default: asked from /readyz)")
    _publish_options(mms, default_visibility="public")
    mms.set_defaults(func=client_command(_import_mms))


def _publish_options(cmd: argparse.ArgumentParser, default_visibility: str | None = None) -> None:
    cmd.add_argument("--id", required=True, dest="adapter_id", help="adapter ID to publish under")
    cmd.add_argument(
        "--visibility",
        choices=["private", "public"],
        default=default_visibility,
        help="change the adapter's visibility (default: keep it; new adapters are private)",
    )
    cmd.add_argument("--expected-version", type=int, help="publish only if the current version is N (0: new)")
    cmd.add_argument("--allow-fingerprint-mismatch", action="store_true", help="accept another backbone's adapter")
    cmd.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a TTY)")


Command = Callable[[Chorus, argparse.Namespace], int]


def client_command(func: Command) -> Callable[[argparse.Namespace], int]:
    """`func(client, args)` as a `chorus` handler `handler(args) -> exit code`."""
    return lambda args: run(args, func)


def run(args: argparse.Namespace, func: Command) -> int:
    """Run a client command and turn every failure into a message on stderr and a documented exit code."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would drown the output
    try:
        with Chorus(args.url, args.api_key) as client:
            return func(client, args)
    except (errors.ChorusError, OSError, ValueError) as exc:
        print(f"chorus: error: {for_the_cli(str(exc))}", file=sys.stderr)
        return exit_code(exc)


# The server's hints name HTTP requests and headers; on the command line the option or command doing the same is.
CLI_HINTS = (
    ("GET /v1/adapters", "`chorus adapters list`"),
    ("send 'Authorization: Bearer <key>'", "pass --api-key or set CHORUS_API_KEY"),
)


def for_the_cli(message: str) -> str:
    """A server message with its HTTP-level hints replaced by the command line's own."""
    for http, cli_hint in CLI_HINTS:
        message = message.replace(http, cli_hint)
    return message


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False) if args.json else text)


def _transcribe(client: Chorus, args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
    options: dict[str, Any] = {"response_format": args.format, "word_timestamps": args.word_timestamps}
    if args.language:
        options["language"] = args.language
    for name in ("decoder", "prompt"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    present = [f for f in args.files if Path(f).exists()]
    results = [  # a missing file is reported with the others; the rest are still sent
        FileResult(Path(f), error=errors.ChorusError("no such file", code=FILE_NOT_FOUND))
        for f in args.files
        if not Path(f).exists()
    ]
    if present:
        results += client.transcribe_many(
            present, args.adapter, concurrency=args.concurrency, progress=args.progress, **options
        )
    if not results:
        raise FileNotFoundError(f"no audio files in {', '.join(args.files)}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    report = []
    for item in results:
        entry = _report_one(item, args)
        report.append(entry)
        if item.error is not None:
            print(f"chorus: error: {item.path}: {for_the_cli(str(item.error))}", file=sys.stderr)
        elif not args.json and not args.out:
            if len(results) > 1:
                print(f"==> {item.path} <==")
            print(_body(item.result).rstrip("\n"))
        elif not args.json:
            print(f"{item.path} -> {entry['output']}")
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    failures = [item.error for item in results if item.error is not None]
    return exit_code(failures[0]) if failures else EXIT_OK


def _report_one(item: FileResult, args: argparse.Namespace) -> dict[str, Any]:
    # A failed file reports the adapter as given (no version served it); a transcribed one, the version that did.
    entry: dict[str, Any] = {"file": str(item.path), "adapter": args.adapter, "output": None, "result": None}
    entry["error"] = None
    if item.error is not None:
        err = item.error
        entry["error"] = {"message": for_the_cli(err.message), "type": err.type, "code": err.code, "status": err.status}
        return entry
    entry["adapter"] = item.adapter
    if isinstance(item.result, Transcription):
        entry["result"] = item.result.model_dump(exclude_none=True, exclude={"adapter"})
    else:
        entry["result"] = item.result
    if args.out:
        target = args.out / f"{item.path.stem}.{SUFFIXES[args.format]}"
        target.write_text(_body(item.result))
        entry["output"] = str(target)
    return entry


def _body(result: Transcription | str | None) -> str:
    if isinstance(result, Transcription):
        return result.model_dump_json(indent=2, exclude_none=True, exclude={"adapter"}) + "\n"
    return result or ""


def _classify(client: Chorus, args: argparse.Namespace) -> int:
    """One request per file, in order; a failed file is reported and the others still run."""
    paths = audio_files(args.files)
    if not paths:
        raise FileNotFoundError(f"no audio files in {', '.join(args.files)}")
    report: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    for path in paths:
        try:
            if not path.exists():
                raise errors.ChorusError("no such file", code=FILE_NOT_FOUND)
            result: Classification = client.classify(path, args.adapter, top_k=args.top_k)
        except (errors.ChorusError, OSError, ValueError) as exc:
            failures.append(exc)
            print(f"chorus: error: {path}: {for_the_cli(str(exc))}", file=sys.stderr)
            report.append({"file": str(path), "model": None, "labels": None, "error": str(exc)})
            continue
        report.append({"file": str(path), **result.model_dump(), "error": None})
        if not args.json:
            scores = ", ".join(f"{item.label} {item.score:.3f}" for item in result.labels)
            print(f"{path}: {scores}" if len(paths) > 1 else scores)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    return exit_code(failures[0]) if failures else EXIT_OK


ADAPTER_COLUMNS = ("id", "version", "kind", "language", "visibility", "owner", "size", "resident", "pinned")


def _table(adapters: Sequence[Adapter]) -> str:
    rows = [ADAPTER_COLUMNS] + [tuple(str(getattr(a, c)) for c in ADAPTER_COLUMNS) for a in adapters]
    widths = [max(len(row[i]) for row in rows) for i in range(len(ADAPTER_COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _list(client: Chorus, args: argparse.Namespace) -> int:
    adapters = list(client.iter_adapters(page_size=args.page_size))
    _emit(args, [a.model_dump() for a in adapters], _table(adapters) if adapters else "no adapters")
    return EXIT_OK


TIME_FIELDS = ("created_at",)  # Unix seconds in the API; shown as UTC dates on the command line


def _describe(adapter: Adapter) -> str:
    fields = adapter.model_dump()
    for name in TIME_FIELDS:
        if isinstance(fields.get(name), int | float) and fields[name] > 0:
            fields[name] = datetime.fromtimestamp(fields[name], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "\n".join(f"{key}: {value}" for key, value in fields.items())


def _show(client: Chorus, args: argparse.Namespace) -> int:
    adapter = client.get_adapter(args.ref)
    _emit(args, adapter.model_dump(), _describe(adapter))
    return EXIT_OK


def _delete(client: Chorus, args: argparse.Namespace) -> int:
    deleted = client.delete_adapter(args.ref)
    what = f"{deleted.id}@{deleted.version}" if deleted.version else f"{deleted.id} (all versions)"
    _emit(args, deleted.model_dump(), f"deleted {what}")
    return EXIT_OK


def _pin(client: Chorus, args: argparse.Namespace) -> int:
    adapter = client.pin(args.ref)
    _emit(args, adapter.model_dump(), f"pinned {adapter.ref} (resident: {adapter.resident})")
    return EXIT_OK


def _unpin(client: Chorus, args: argparse.Namespace) -> int:
    adapter = client.unpin(args.ref)
    _emit(args, adapter.model_dump(), f"unpinned {adapter.ref}")
    return EXIT_OK


def _upload(client: Chorus, args: argparse.Namespace, source: Path | None = None) -> int:
    adapter = client.upload_adapter(
        source or args.file,
        args.adapter_id,
        visibility=args.visibility,
        expected_version=args.expected_version,
        allow_fingerprint_mismatch=args.allow_fingerprint_mismatch,
        progress=args.progress,
        **_decoding_options(args),
    )
    extras = [f"language model {adapter.lm['format']}"] if adapter.lm else []
    extras += [f"lexicon of {adapter.lexicon['words']} words"] if adapter.lexicon else []
    text = f"published {adapter.ref} ({adapter.kind}, {adapter.size} bytes{''.join(', ' + e for e in extras)})"
    _emit(args, adapter.model_dump(), text)
    return EXIT_OK


def _decoding_options(args: argparse.Namespace) -> dict[str, Any]:
    """`upload_adapter`'s lm, lexicon and beam from `adapters upload` (import-mms has none)."""
    beam = {name: getattr(args, name) for name in BEAM_SETTINGS if getattr(args, name, None) is not None}
    options: dict[str, Any] = {"lm": getattr(args, "lm", None), "lexicon": getattr(args, "lexicon", None)}
    return {**options, "beam": beam} if beam else options


def _import_mms(client: Chorus, args: argparse.Namespace) -> int:
    try:
        from chorus_server.engine.mms import convert_mms
    except ImportError:
        print(f"chorus: error: import-mms converts the file locally and {SERVER_NEEDED}", file=sys.stderr)
        return EXIT_FAILURE

    fingerprint = args.fingerprint
    if args.backbone is None and fingerprint is None:
        fingerprint = client.ready().get("backbone")  # the server names the backbone it serves
        if not isinstance(fingerprint, str):
            raise ValueError("the server did not report its backbone fingerprint; pass --backbone or --fingerprint")
    with tempfile.TemporaryDirectory() as tmp:
        native = Path(tmp) / f"{args.adapter_id}.safetensors"
        convert_mms(args.file, args.vocab, args.language, native, backbone=args.backbone, fingerprint=fingerprint)
        return _upload(client, args, source=native)


PLUGIN_GROUP = "chorus.commands"
# Commands the server distribution registers; named here so a client-only install can say what is missing.
SERVER_COMMANDS = ("serve", "keys", "dev", "train-adapter", "train-classifier")
SERVER_NEEDED = "needs the Chorus server (torch): pip install ./clients . from a Chorus checkout (chorus-asr)"
Plugin = Callable[[argparse._SubParsersAction], None]


def installed_plugins() -> list[Plugin]:
    """`add_commands(subparsers)` functions registered under the `chorus.commands` entry-point group."""
    return [entry.load() for entry in entry_points(group=PLUGIN_GROUP)]


def versions() -> str:
    """`chorus X (client), server Y`, from the installed distributions' metadata."""

    def installed(distribution: str) -> str | None:
        try:
            return version(distribution)
        except PackageNotFoundError:
            return None

    client, server = installed("chorus-client") or "unknown", installed("chorus-asr")
    return f"chorus {client} (client), server {server}" if server else f"chorus {client} (client; no server installed)"


def build_parser(plugins: Sequence[Plugin] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chorus", description="Chorus multi-tenant speech recognition")
    parser.add_argument("--version", action="version", version=versions())
    commands = parser.add_subparsers(dest="command", required=True)
    add_commands(commands)
    for plugin in plugins:
        plugin(commands)
    return parser


def main(argv: Sequence[str] | None = None, plugins: Sequence[Plugin] | None = None) -> int:
    """Entry point of `chorus`; `plugins=None` uses the installed ones."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = installed_plugins() if plugins is None else plugins
    if argv and argv[0] in SERVER_COMMANDS and not plugins:
        print(f"chorus: error: `chorus {argv[0]}` {SERVER_NEEDED}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser(plugins).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
