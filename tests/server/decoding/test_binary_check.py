"""An uploaded KenLM binary is loaded in a child process before it is stored (`decoding/binary_check.py`): one
that does not load, or does not load in time, is refused with KenLM's reason; the server process never maps it."""

from __future__ import annotations

from pathlib import Path

import pytest

from chorus_server.decoding.binary_check import check_kenlm_binary
from chorus_store.decoding_files import KENLM_MAGIC
from chorus_store.errors import AdapterRejected

pytest.importorskip("flashlight.lib.text.decoder")

# words.kenlm: KenLM's build_binary (probing) of words.arpa, the unigrams and bigrams of tests/server's LEXICON
# words (built on x86-64 Linux: a binary loads only on the architecture that wrote it).
VALID = Path(__file__).parent / "data" / "words.kenlm"


def crashing(tmp_path: Path) -> Path:
    """words.kenlm with one byte of its hash table changed: KenLM passes its header checks and then crashes the
    process that loads it (SIGSEGV on x86-64), which is what a hostile upload would do to the server."""
    data = bytearray(VALID.read_bytes())
    data[146] = 0xFF
    path = tmp_path / "crashing.kenlm"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """KenLM's magic and version, then a body that is not a model."""
    path = tmp_path / "model.bin"
    path.write_bytes(KENLM_MAGIC + b"5\n\0" + bytes(range(256)) * 4)
    return path


def test_a_binary_that_does_not_load_is_refused_with_kenlms_reason(damaged: Path) -> None:
    with pytest.raises(AdapterRejected) as refused:
        check_kenlm_binary(damaged)
    message = str(refused.value)
    assert message.startswith("the KenLM binary does not load: File looks like it should be loaded with mmap")
    assert " threw " not in message and "build_binary" in message


def test_a_binary_that_does_not_load_in_time_is_refused(damaged: Path) -> None:
    with pytest.raises(AdapterRejected, match=r"did not load within 0\.001 s"):
        check_kenlm_binary(damaged, timeout=0.001)


def test_a_binary_that_crashes_kenlm_is_refused_and_this_process_lives(tmp_path: Path) -> None:
    with pytest.raises(AdapterRejected, match=r"crashed KenLM while loading \(signal \d+\)"):
        check_kenlm_binary(crashing(tmp_path))
    check_kenlm_binary(VALID)  # and a sound binary passes
