"""A real PostgreSQL server for the tests and benchmarks: Debian's `postgresql` binaries (`initdb`, `pg_ctl`) run a
throwaway cluster in a temporary directory on a free loopback port, trusting local connections, one per test
session. Tests take a fresh database each (`create_database`) so they never see each other's rows.

PostgreSQL refuses to run as root: under root the server runs as the `postgres` OS user (which Debian's package
creates), in a directory it owns under the system temp dir (pytest's own temp dirs are private to root).
`tools/install-postgres.sh` installs the binaries (CI runs it); without them the tests skip, unless
CHORUS_TEST_POSTGRES=require (CI), where they fail."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from chorus_server.background import free_port

DATABASE = "chorus"
SUPERUSER = "postgres"
REQUIRE_ENV = "CHORUS_TEST_POSTGRES"  # "require": a missing PostgreSQL fails the tests instead of skipping them
# Throwaway data: nothing needs to survive a crash, so skip the disk flushes (tests and benchmarks say so).
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
INSTALL_HINT = "install it with tools/install-postgres.sh (Debian's postgresql package)"


def bin_dir() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `createdb`: from PATH, else the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)
    return Path(versions[0]).parent if versions else None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def missing_reason() -> str | None:
    """Why a server cannot be started here (None: it can)."""
    if bin_dir() is None:
        return f"PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return f"running as root needs the '{SUPERUSER}' OS user to run PostgreSQL; {INSTALL_HINT}"
    return None


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") == "require"


def _as_server_user(command: Sequence[str]) -> list[str]:
    """`command` as the OS user that may run PostgreSQL: ourselves, or `postgres` when we are root."""
    if os.geteuid() != 0:
        return list(command)
    if shutil.which("runuser"):
        return ["runuser", "-u", SUPERUSER, "--", *command]
    return ["su", SUPERUSER, "-s", "/bin/sh", "-c", shlex.join(command)]


def _run(command: Sequence[str], timeout: float) -> None:
    result = subprocess.run(_as_server_user(command), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}): {result.stderr or result.stdout}")


class Cluster:
    """A throwaway PostgreSQL server that tests may stop and start again (faults: the database goes away)."""

    def __init__(self, root: Path, options: dict[str, str], timeout: float):
        binaries = bin_dir()
        assert binaries is not None
        self.pg_ctl, self.timeout = binaries / "pg_ctl", timeout
        self.data, self.log = root / "data", root / "server.log"
        self.port = int(options["port"])
        self.server_url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}"
        self._options = " ".join(f"-c {name}={shlex.quote(value)}" for name, value in options.items())

    def start(self) -> None:
        try:
            _run([str(self.pg_ctl), "-D", str(self.data), "-l", str(self.log), "-o", self._options, "-w",
                  "-t", str(int(self.timeout)), "start"], self.timeout + 10)  # fmt: skip
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc}\n{tail}") from exc

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: connections are closed, as in an orderly restart; `immediate`: a crash)."""
        _run([str(self.pg_ctl), "-D", str(self.data), "-m", mode, "-w", "stop"], 30)


@contextlib.contextmanager
def cluster(settings: dict[str, str] | None = None, timeout: float = 60.0) -> Iterator[Cluster]:
    """Start a throwaway PostgreSQL server; yields it (`server_url`, `stop()`, `start()`). `settings` are server
    settings (`-c name=value`) over `FAST`. The server is stopped and its directory removed on exit."""
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    binaries = bin_dir()
    assert binaries is not None
    root = Path(tempfile.mkdtemp(prefix="chorus-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SUPERUSER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    options = {**FAST, **(settings or {}), "listen_addresses": "127.0.0.1", "port": str(free_port())}
    # The socket goes in our own directory: the default (/var/run/postgresql) may be missing or not ours.
    options["unix_socket_directories"] = str(root)
    server = Cluster(root, options, timeout)
    started = False
    try:
        _run([str(binaries / "initdb"), "-D", str(server.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
              "--locale=C", "--no-sync"], timeout)  # fmt: skip
        started = True  # pg_ctl may leave a server running even when it gives up waiting
        server.start()
        yield server
    finally:
        if started:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres(database: str = DATABASE, settings: dict[str, str] | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Start a throwaway PostgreSQL server with `database` created; yields its URL,
    `postgresql://postgres@127.0.0.1:PORT/<database>`. `settings` are server settings (`-c name=value`) over
    `FAST`. The server is stopped and its directory removed on exit."""
    with cluster(settings, timeout) as server:
        yield create_database(server.server_url, database)


def create_database(url: str, name: str) -> str:
    """Create database `name` on the server at `url` (any database of it, or none); returns the new one's URL."""
    binaries = bin_dir()
    assert binaries is not None
    server = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    host_port = server.rsplit("@", 1)[1]
    host, port = host_port.rsplit(":", 1)
    command = [str(binaries / "createdb"), "-h", host, "-p", port, "-U", SUPERUSER, name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"cannot create database {name!r}: {result.stderr.strip()}")
    return f"{server}/{name}"
