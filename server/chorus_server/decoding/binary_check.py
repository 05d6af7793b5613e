"""An uploaded KenLM binary is loaded once in a child process before it is stored.

An ARPA file is text, checked line by line as it is received (`chorus_store.decoding_files`). A KenLM binary is
KenLM's own memory image: only its magic and version can be read without KenLM, and a damaged or hostile body
either fails to load (KenLM raises) or, where the damage passes KenLM's checks, can take down the process that
maps it. The server loads it in a process of its own first, under a memory and time limit, and scores a few
words with it; a child that fails, crashes or runs out of either limit refuses the upload with KenLM's message
(422), and nothing is stored. The serving process loads only files that passed.

    python -m chorus_server.decoding.binary_check PATH    # exit 0 and "ok" when PATH loads and answers
"""

from __future__ import annotations

import importlib.util
import logging
import resource
import subprocess
import sys
from pathlib import Path

from chorus_store.errors import AdapterRejected

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 60.0
MIN_MEMORY_BYTES = 1 << 30  # the child's address-space limit: this, or 4x the file, whichever is larger
PROBE_WORDS = ("<unk>", "<s>", "</s>", "a", "the")


def flashlight_installed() -> bool:
    return importlib.util.find_spec("flashlight") is not None


def check_kenlm_binary(path: Path, timeout: float = TIMEOUT_SECONDS) -> None:
    """Load `path` with KenLM in a child process; raise `AdapterRejected` saying why when it does not load. A
    server without flashlight-text (no beam search) cannot load it at all and stores it on its magic alone."""
    if not flashlight_installed():
        logger.info("flashlight-text is not installed: the KenLM binary is stored unchecked (beam search is off)")
        return
    memory = max(MIN_MEMORY_BYTES, 4 * path.stat().st_size)
    fix = "build it again with KenLM's build_binary from an ARPA file (or upload the ARPA file)"
    try:
        child = subprocess.run(
            [sys.executable, "-m", __name__, str(path), str(memory)], capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise AdapterRejected(f"the KenLM binary did not load within {timeout:g} s; {fix}") from None
    if child.returncode == 0 and child.stdout.strip() == b"ok":
        return
    if child.returncode < 0:
        raise AdapterRejected(f"the KenLM binary crashed KenLM while loading (signal {-child.returncode}); {fix}")
    raise AdapterRejected(f"the KenLM binary does not load: {_reason(child.stderr)}; {fix}")


def _reason(stderr: bytes) -> str:
    """KenLM's own message, without the line naming the C++ function that threw (a build path of its wheel)."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    message = " ".join(line for line in lines if line and " threw " not in line)
    return message[:300] or "KenLM gave no reason"


def _load(path: str, memory: int) -> None:
    """In the child: under the memory limit, load the model and score a few words, as the decoder will."""
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    words = Dictionary(list(PROBE_WORDS))
    words.set_default_index(0)
    model = KenLM(path, words)
    state = model.start(False)
    for index in range(len(PROBE_WORDS)):
        state, _ = model.score(state, index)
    model.finish(state)


if __name__ == "__main__":
    try:
        _load(sys.argv[1], int(sys.argv[2]))
    except Exception as error:  # KenLM's RuntimeError (or MemoryError): its message is the uploader's reason
        print(str(error) or type(error).__name__, file=sys.stderr)
        sys.exit(1)
    print("ok")
