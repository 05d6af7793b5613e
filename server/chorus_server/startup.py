"""What `chorus serve` checks before anything starts, so a bad setting, a missing model directory or a busy port is
one line naming the variable, path or port (and a non-zero exit), never a traceback or a "Chorus ready" logged
before the failure."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from chorus_server.settings import Settings, get_settings


class StartupError(Exception):
    """A problem the operator fixes; its message is the one line shown."""


def env_name(location: tuple[int | str, ...]) -> str:
    """A validation error's location -> the environment variable that sets it: ('batch', 'max_items') ->
    CHORUS_BATCH__MAX_ITEMS (dict keys and list indices inside a value are not part of the name)."""
    names = [str(part) for part in location if isinstance(part, str)]
    return "CHORUS_" + "__".join(name.upper() for name in names[:2])


def load_settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:  # a value that is not even JSON (dicts and lists are JSON in the environment)
        field = re.search(r'field "(\w+)"', str(exc))
        prefix = f"CHORUS_{field.group(1).upper() if field else ''}"
        names = [name for name, value in os.environ.items() if name.upper().startswith(prefix) and not _json(value)]
        where = ", ".join(f"{name}={os.environ[name]!r}" for name in sorted(names)) or str(exc)
        raise StartupError(
            f'invalid setting: {where} is not valid JSON (dicts and lists are JSON, e.g. \'{{"key": "tenant"}}\')'
        ) from None
    except ValidationError as exc:
        problems = [
            f"{env_name(error['loc'])}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors(include_url=False)
        ]
        raise StartupError("invalid setting: " + "; ".join(problems) + " (from the environment or .env)") from None


def _json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def check_paths(settings: Settings) -> None:
    backbone = settings.backbone
    if backbone is not None and not (Path(backbone) / "config.json").is_file():
        what = "is not a directory" if not Path(backbone).is_dir() else "has no config.json"
        raise StartupError(
            f"CHORUS_BACKBONE={str(backbone)!r} {what}; point it at a Hugging Face wav2vec 2.0 directory "
            "(config.json, preprocessor_config.json, model.safetensors), or unset it for the bundled demo model"
        )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the app starts (uvicorn would bind after its start-up has run)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use (another chorus serve?); stop it, or choose another port: "
                "--port N (PORT=N with make serve)"
            ) from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"not allowed to listen on port {port} on {host}; use a port above 1023") from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
