"""`find_segments`: runs of identical adapters, covering the batch in order."""

from __future__ import annotations

import pytest

from chorus_server.engine import Adapter, AdapterInfo, Vocabulary, find_segments

VOCAB = Vocabulary(("<pad>", "|", "a"), blank_id=0, word_delimiter_id=1)
A, B, C = (Adapter(AdapterInfo(name=n, kind="head"), VOCAB, hidden_size=8) for n in "abc")


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ([], []),
        ([A], [(0, 1, "a")]),
        ([A, A, A], [(0, 3, "a")]),
        ([A, B], [(0, 1, "a"), (1, 2, "b")]),
        ([A, A, B, C, C], [(0, 2, "a"), (2, 3, "b"), (3, 5, "c")]),
        ([A, B, A], [(0, 1, "a"), (1, 2, "b"), (2, 3, "a")]),  # unsorted input: runs, not groups
    ],
)
def test_find_segments(batch, expected):
    assert [(s.start, s.stop, s.adapter.name) for s in find_segments(batch)] == expected
