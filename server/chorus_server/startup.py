"""What `chorus serve` checks before anything starts, so a bad setting, a missing model directory or a busy port is
one line naming the variable, path or port (and a non-zero exit), never a traceback or a "Chorus ready" logged
before the failure."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from pydantic import ValidationError

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
    except ValidationError as exc:
        problems = [
            f"{env_name(error['loc'])}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors(include_url=False)
        ]
        raise StartupError("invalid setting: " + "; ".join(problems) + " (from the environment or .env)") from None


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
                f"port {port} on {host} is already in use (another chorus serve?); stop it or pass --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"not allowed to listen on port {port} on {host}; use a port above 1023") from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
