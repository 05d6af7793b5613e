"""A version's language model, lexicon and beam settings: stored with it on every backend, checked while they are
received, and each hostile file refused with a message that says how to fix it, leaving nothing stored."""

from __future__ import annotations

import io
import json

import pytest

from chorus_store import AdapterCorrupt, AdapterNotFound, AdapterRejected, LocalStore
from chorus_store.decoding_files import KENLM_MAGIC, DecodingLimits, DecodingUpload
from chorus_store.errors import VersionNotFound
from tests.adapter_store.conftest import reopen

# The eng-0 adapter of the tiny random model spells these characters (besides its specials): b c o s w à ï ù.
WORDS = ["bob", "cow", "sow", "boss", "ùbo"]
LEXICON = ("\n".join(WORDS) + "\n").encode()


def arpa(counts: dict[int, int] | None = None, sections: dict[int, list[str]] | None = None, end: bool = True) -> bytes:
    """A small valid bigram ARPA model (or one with the header counts or sections replaced)."""
    sections = sections or {
        1: ["-1.0\t<s>\t-0.3", "-1.2\t</s>", "-0.9\tbob\t-0.2", "-1.1\tcow\t-0.2", "-99\t<unk>"],
        2: ["-0.4\t<s> bob", "-0.5\tbob cow", "-0.6\tcow </s>"],
    }
    counts = counts or {n: len(lines) for n, lines in sections.items()}
    text = "\\data\\\n" + "".join(f"ngram {n}={c}\n" for n, c in counts.items()) + "\n"
    for n, lines in sections.items():
        text += f"\\{n}-grams:\n" + "".join(line + "\n" for line in lines) + "\n"
    return (text + ("\\end\\\n" if end else "")).encode()


@pytest.fixture
def eng(adapter_files):
    return next(p for p in adapter_files if p.name.startswith("eng"))


def upload(lm: bytes | None = None, lexicon: bytes | None = None, **beam: float) -> DecodingUpload:
    return DecodingUpload(
        io.BytesIO(lm) if lm is not None else None, io.BytesIO(lexicon) if lexicon is not None else None, beam
    )


def stored_names(store) -> list[str]:
    """Every file or object the store holds for adapters (uploads in flight excluded)."""
    if isinstance(store, LocalStore):
        return sorted(str(p.relative_to(store.root)) for p in (store.root / "adapters").rglob("*") if p.is_file())
    return sorted(m["path"] for m in store._list(store._key("adapters")))


def test_publish_stores_lm_lexicon_and_beam_with_the_version(store, eng):
    record = store.publish("acme/en", eng, decoding=upload(arpa(), LEXICON, beam_width=8, lm_weight=0.7))
    assert record.lm is not None and record.lm["format"] == "arpa" and record.lm["order"] == 2
    assert record.lm["size"] == len(arpa()) and len(record.lm["sha256"]) == 64
    assert record.lexicon is not None and record.lexicon["words"] == len(WORDS)
    assert record.beam == {"beam_width": 8, "lm_weight": 0.7}
    assert store.decoding_file(record, "lm").read_bytes() == arpa()
    assert store.decoding_file(record, "lexicon").read_bytes() == LEXICON
    again = reopen(store).get("acme/en@1")
    assert (again.lm, again.lexicon, again.beam) == (record.lm, record.lexicon, record.beam)
    assert store.owner_bytes("acme") == record.size + len(arpa()) + len(LEXICON)


def test_versions_without_decoding_files_have_none(store, eng):
    with_files = store.publish("acme/en", eng, decoding=upload(lexicon=LEXICON))
    plain = store.publish("acme/en", eng)
    assert with_files.lm is None and with_files.lexicon is not None
    assert (plain.lm, plain.lexicon, plain.beam) == (None, None, {})
    with pytest.raises(VersionNotFound, match="no lexicon"):
        store.decoding_file(plain, "lexicon")
    assert store.decoding_file(store.get("acme/en@1"), "lexicon").read_bytes() == LEXICON


def test_minus_infinity_is_a_log_probability(store, eng):
    """log10(0): toolkits write it, KenLM reads it."""
    record = store.publish("acme/en", eng, decoding=upload(arpa().replace(b"-99\t<unk>", b"-inf\t<unk>")))
    assert record.lm["order"] == 2


def test_a_kenlm_binary_is_stored_by_its_magic(store, eng):
    binary = KENLM_MAGIC + b"5\n\0" + bytes(range(256)) * 4
    record = store.publish("acme/en", eng, decoding=upload(binary))
    assert record.lm == {**record.lm, "format": "kenlm", "size": len(binary)}
    assert store.decoding_file(record, "lm").read_bytes() == binary


def test_deleting_a_version_removes_its_decoding_files(store, eng):
    store.publish("acme/en", eng, decoding=upload(arpa(), LEXICON))
    store.publish("acme/en", eng)
    store.delete("acme/en", 1)
    assert not [name for name in stored_names(store) if name.endswith((".lm", ".lexicon"))]
    assert store.owner_bytes("acme") == store.get("acme/en").size


def test_a_damaged_stored_lm_is_refused_when_read(store, eng):
    record = store.publish("acme/en", eng, decoding=upload(arpa()))
    damaged = arpa().replace(b"-0.4", b"-0.9")
    if isinstance(store, LocalStore):
        (store.adapters_dir / "acme/en/v000001.lm").write_bytes(damaged)
    else:
        import obstore

        obstore.put(store.client, store._adapter_key("acme/en", "v000001.lm"), damaged)
    with pytest.raises(AdapterCorrupt, match="lm file of adapter acme/en@1 is corrupt"):
        store.decoding_file(record, "lm")


def test_a_record_naming_a_path_never_leaves_the_cache_folder(store, eng, tmp_path):
    """A record is data: its sha256 names the S3 cache copy, so one that is not hex is damage, never a path."""
    from dataclasses import replace

    record = store.publish("acme/en", eng, decoding=upload(arpa()))
    hostile = replace(record, lm={**record.lm, "sha256": "../../../../escape"})
    with pytest.raises((AdapterCorrupt, VersionNotFound)):
        if isinstance(store, LocalStore):  # the local file is named by the version, never the record's hash
            hostile = replace(record, lm={**record.lm, "size": 1})
        store.decoding_file(hostile, "lm")
    assert not list(tmp_path.rglob("escape*"))


def test_beam_settings_must_be_finite_numbers(store, eng):
    for beam in ({"beam_width": float("nan")}, {"lm_weight": "high"}, {"bad name": 1.0}, {"x": True}):
        with pytest.raises(AdapterRejected, match="beam setting"):
            store.publish("acme/en", eng, decoding=DecodingUpload(beam=beam))
    with pytest.raises(AdapterNotFound):
        store.get("acme/en")


TRUNCATED = arpa()[: arpa().index(b"\\2-grams:")]  # cut between sections: every line read is fine
TRUNCATED_MID_LINE = arpa()[: arpa().index(b"-0.9\tbob") + 3]  # "-0." and the file ends

HOSTILE_LMS: dict[str, tuple[bytes, str]] = {
    "truncated": (TRUNCATED, "ends before its \\\\end\\\\ line"),
    "truncated_mid_line": (TRUNCATED_MID_LINE, "line 8: a 1-gram line needs a log-probability and 1 word"),
    "no_end": (arpa(end=False), "ends before its \\\\end\\\\ line"),
    "huge_counts": (arpa(counts={1: 10**17, 2: 3}), "declares 100000000000000000 n-grams, more than a 175-byte file"),
    "count_mismatch": (arpa(counts={1: 6, 2: 3}), "1-grams section has 5 entries, the header declares 6"),
    "more_than_declared": (arpa(counts={1: 4, 2: 3}), "more 1-grams than the 4 declared"),
    "no_data_header": (arpa()[len(b"\\data\\\n") :], "expected the \\\\data\\\\ header"),
    "orders_skip": (arpa().replace(b"ngram 2=3", b"ngram 3=3"), "expected 'ngram 2=<count>'"),
    "sections_out_of_order": (
        arpa(counts={1: 5, 2: 3}, sections={2: ["-0.4\t<s> bob"] * 3, 1: ["-1\t<s>"] * 5}),
        "expected \\\\1-grams:",
    ),
    "bad_number": (arpa().replace(b"-0.5\tbob cow", b"x0.5\tbob cow"), "'x0.5' is not a number"),
    "nan_probability": (arpa().replace(b"-0.5\tbob cow", b"nan\tbob cow"), "'nan' is not a log10 value"),
    "positive_infinity": (arpa().replace(b"-0.5\tbob cow", b"inf\tbob cow"), "'inf' is not a log10 value"),
    "too_many_words": (arpa().replace(b"-0.5\tbob cow", b"-0.5\tbob cow sow"), "2 word"),
    "no_sentence_marks": (
        arpa(sections={1: ["-1\tbob", "-1\tcow"], 2: ["-1\tbob cow"]}),
        "lack <s> or </s>",
    ),
    "order_too_high": (
        b"\\data\\\n" + b"".join(b"ngram %d=1\n" % n for n in range(1, 9)) + b"\n" + b"x" * 200,
        "order 7 is above",
    ),
    "binary_junk": (bytes(range(256)) * 64, "expected the \\\\data\\\\ header"),
    "long_line": (b"\\data\\\nngram 1=1\n\n\\1-grams:\n-1 " + b"a" * 70_000 + b"\n", "longer than 65536 bytes"),
    "gzip": (b"\x1f\x8b\x08\x00" + b"\x00" * 64, "gzip-compressed"),
    "kenlm_wrong_version": (KENLM_MAGIC + b"4\n\0" + b"\x00" * 64, "unsupported format version"),
    "kenlm_magic_damaged": (KENLM_MAGIC[:12] + b"XX" + KENLM_MAGIC[14:] + b"5\n\0", "unsupported format version"),
    "pickle": (b"\x80\x04\x95" + b"\x00" * 64, "expected the \\\\data\\\\ header"),
    "empty": (b"", "language model file is empty"),
    "non_utf8_word": (arpa().replace(b"bob cow", b"b\xffb cow"), "words must be UTF-8"),
    "stray_byte_after_end": (arpa() + b"\xc3", "text after \\\\end\\\\"),
}

HOSTILE_LEXICONS: dict[str, tuple[bytes, str]] = {
    "outside_vocabulary": (b"bob\ndog\n", "'dog' uses 'd', 'g', outside the adapter's vocabulary"),
    "uppercase": (b"Bob\n", "'B', outside"),
    "non_utf8": (b"bob\n\xff\xfe\n", "line 2 is not UTF-8"),
    "two_words": (b"bob cow\n", "more than one word"),
    "binary_junk": (bytes(range(1, 256)) * 8, "line 1"),
    "empty": (b"\n\n", "no words"),
    "path_like": (b"../../etc/passwd\n", "outside the adapter's vocabulary"),
    "nul": (b"bo\x00b\n", "'\\\\x00'"),
    "long_word": (b"b" * 101 + b"\n", "longer than 100 characters"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LMS))
def test_hostile_language_models_are_refused(store, eng, case):
    data, message = HOSTILE_LMS[case]
    with pytest.raises(AdapterRejected, match=message):
        store.publish("acme/en", eng, decoding=upload(data))
    assert_nothing_stored(store)


@pytest.mark.parametrize("case", sorted(HOSTILE_LEXICONS))
def test_hostile_lexicons_are_refused(store, eng, case):
    data, message = HOSTILE_LEXICONS[case]
    with pytest.raises(AdapterRejected, match=message):
        store.publish("acme/en", eng, decoding=upload(arpa(), data))
    assert_nothing_stored(store)


def assert_nothing_stored(store) -> None:
    with pytest.raises(AdapterNotFound):
        store.get("acme/en")
    assert not stored_names(store)
    if isinstance(store, LocalStore):  # no staging file is left behind either
        assert not [p for p in (store.root / "tmp").iterdir() if not p.name.endswith(".lock")]
    else:
        assert not [p for p in store.scratch.iterdir() if p.is_file()]


@pytest.mark.parametrize(
    ("limits", "files", "message"),
    [
        (DecodingLimits(max_lm_bytes=100), (arpa(), None), "language model exceeds the 100-byte limit"),
        (DecodingLimits(max_lexicon_bytes=10), (None, LEXICON), "lexicon exceeds the 10-byte limit"),
        (DecodingLimits(max_lexicon_words=2), (None, LEXICON), "more than 2 words"),
    ],
)
def test_over_size_decoding_files_are_refused(store, eng, limits, files, message):
    store.decoding_limits = limits
    with pytest.raises(AdapterRejected, match=message):
        store.publish("acme/en", eng, decoding=upload(*files))
    assert_nothing_stored(store)


def test_an_unsized_stream_is_cut_off_at_the_limit(store, eng):
    """A source whose size is unknown in advance (a socket) is still stopped once it passes the limit."""

    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            buffer[:] = b"\n" * len(buffer)
            return len(buffer)

        def seekable(self) -> bool:
            return False

        def tell(self) -> int:
            raise OSError("not seekable")

    store.decoding_limits = DecodingLimits(max_lexicon_bytes=3 * 1024 * 1024)
    with pytest.raises(AdapterRejected, match="lexicon exceeds"):
        store.publish("acme/en", eng, decoding=DecodingUpload(lexicon=Endless()))
    assert_nothing_stored(store)


def test_a_record_without_decoding_fields_reads_as_before(store, eng):
    """Records written before decoding files existed have no `lm`, `lexicon` or `beam`: they read as none."""
    record = store.publish("acme/en", eng)
    if isinstance(store, LocalStore):
        body = json.loads((store.adapters_dir / "acme/en/v000001.json").read_text())
    else:
        body = json.loads(store._get(store._adapter_key("acme/en", "v000001.json"))[0])
    assert not {"lm", "lexicon", "beam"} & set(body)
    assert (record.lm, record.lexicon, record.beam) == (None, None, {})


def big_arpa(bigrams: int = 120_000, edit: tuple[int, bytes] | None = None, declared: int | None = None) -> bytes:
    """A model of several MiB (many read chunks); `edit` replaces bigram line `i`."""
    words = [f"w{i}" for i in range(500)]
    lines = [f"-{(i % 97) / 10:.4f}\t{words[i % 500]} {words[(i * 7) % 500]}".encode() for i in range(bigrams)]
    if edit is not None:
        lines[edit[0]] = edit[1]
    unigrams = [b"-1.0\t<s>\t-0.3", b"-1.0\t</s>"] + [f"-2.5\t{w}\t-0.1".encode() for w in words]
    head = b"\\data\\\nngram 1=%d\nngram 2=%d\n\n\\1-grams:\n" % (len(unigrams), declared or bigrams)
    return head + b"\n".join(unigrams) + b"\n\n\\2-grams:\n" + b"\n".join(lines) + b"\n\n\\end\\\n"


FIRST_BIGRAM_LINE = 6 + 502 + 2  # header (5 lines), \1-grams:, 502 unigrams, blank line, \2-grams:


def test_a_large_model_is_checked_exactly(tmp_path, eng, tiny_model):
    """Ordinary n-gram lines take a fast path; any line it does not accept is judged by the full check, so a fault
    deep inside a model of many chunks is reported with its line, as in a small file."""
    store = LocalStore(tmp_path / "store", tiny_model[2])
    data = big_arpa()
    assert len(data) > 2 * 1024 * 1024
    record = store.publish("acme/en", eng, decoding=upload(data))
    assert record.lm["order"] == 2 and record.lm["size"] == len(data)
    cases = {
        "bad number": (big_arpa(edit=(90_000, b"x1\tw1 w2")), f"line {FIRST_BIGRAM_LINE + 90_000}: 'x1' is not"),
        "nan": (big_arpa(edit=(70_000, b"nan\tw1 w2")), f"line {FIRST_BIGRAM_LINE + 70_000}: 'nan' is not a log10"),
        "three words": (big_arpa(edit=(100_000, b"-1\tw1 w2 w3")), f"line {FIRST_BIGRAM_LINE + 100_000}: a 2-gram"),
        "one too many": (big_arpa(declared=119_999), "more 2-grams than the 119999 declared"),
        "one too few": (big_arpa(declared=120_001), "has 120000 entries, the header declares 120001"),
        "non-UTF-8 word": (big_arpa(edit=(80_000, b"-1\tw\xff w2")), f"line {FIRST_BIGRAM_LINE + 80_000}: words"),
    }
    for case, (hostile, message) in cases.items():
        with pytest.raises(AdapterRejected, match=message):
            store.publish("acme/en", eng, decoding=upload(hostile))
        assert store.get("acme/en").version == 1, case


def test_an_s3_store_fetches_a_decoding_file_once_into_a_copy_named_by_its_hash(store, eng, monkeypatch):
    if isinstance(store, LocalStore):
        pytest.skip("S3 only: a local store's file is used in place")
    record = store.publish("acme/en", eng, decoding=upload(arpa(), LEXICON))
    fetched: list[str] = []
    download = store._download
    monkeypatch.setattr(store, "_download", lambda key, out, rec: fetched.append(key) or download(key, out, rec))
    first = store.decoding_file(record, "lm")
    assert first == store.scratch / "decoding" / f"{record.lm['sha256']}.lm" and first.read_bytes() == arpa()
    assert store.decoding_file(record, "lm") == first and len(fetched) == 1
    store.delete("acme/en")
    with pytest.raises(VersionNotFound, match="was deleted"):
        store.decoding_file(record, "lexicon")  # never fetched, and gone now


def test_an_s3_stores_decoding_copies_stay_within_their_budget_least_recently_used_out(store, eng):
    """Copies of every language model ever fetched stayed on the worker's disk, deleted versions' too: a tenant
    uploading, using and deleting models in a loop could fill it. Now a new copy pushes the least recently used
    out (a use counts), and an evicted copy is fetched again when asked for."""
    if isinstance(store, LocalStore):
        pytest.skip("S3 only: a local store's file is used in place")
    models = [arpa().replace(b"-0.5\tbob cow", f"-0.{n}\tbob cow".encode()) for n in (1, 2, 3)]
    assert len(set(models)) == 3
    records = [store.publish(f"acme/l{n}", eng, decoding=upload(model)) for n, model in enumerate(models)]
    store.decoding_cache_bytes = 2 * max(len(model) for model in models)
    first = store.decoding_file(records[0], "lm")
    second = store.decoding_file(records[1], "lm")
    assert store.decoding_file(records[0], "lm") == first  # used again: now the second is the least recent
    third = store.decoding_file(records[2], "lm")
    folder = store.scratch / "decoding"
    assert sorted(folder.iterdir()) == sorted([first, third]) and not second.exists()
    assert sum(path.stat().st_size for path in folder.iterdir()) <= store.decoding_cache_bytes
    assert store.decoding_file(records[1], "lm").read_bytes() == models[1]  # fetched again
    assert not first.exists() and third.exists()  # which pushed out the least recent of the two


def test_a_decoder_is_built_from_a_copy_evicted_since_its_adapter_was_loaded(store, eng):
    """The adapter cache fetches a version's decoding files when it loads the adapter; by the first beam request
    those copies may have been evicted. Building the decoder asks the store again."""
    from chorus_server.decoding import resources
    from chorus_server.decoding.files import language_model_files
    from chorus_server.engine.adapters import Vocabulary

    record = store.publish("acme/en", eng, decoding=upload(arpa(), LEXICON))
    files = language_model_files(store, record)
    assert files is not None and files.lm is not None and files.lexicon is not None
    if not isinstance(store, LocalStore):
        files.lm.unlink()
        files.lexicon.unlink()
    vocab = Vocabulary(("<pad>", "|", *"abcdefghijklmnopqrstuvwxyz"), blank_id=0, word_delimiter_id=1)
    loaded = resources.build(files, vocab)
    assert loaded.knows("bob") and loaded.knows("cow") and not loaded.knows("ùbo")  # ù: not in the vocabulary
    assert files.lm.read_bytes() == arpa() and files.lexicon.read_bytes() == LEXICON


def test_recovery_removes_decoding_files_without_a_record(tmp_path, eng, tiny_model):
    """A publisher killed after placing a version's files but before its record leaves no trace after a restart."""
    store = LocalStore(tmp_path / "store", tiny_model[2])
    store.publish("acme/en", eng, decoding=upload(arpa(), LEXICON))
    folder = store.adapters_dir / "acme" / "en"
    for name in ("v000002.safetensors", "v000002.lm", "v000002.lexicon"):
        (folder / name).write_bytes(b"left by a dead publisher")
    reopened = LocalStore(store.root, tiny_model[2])
    assert sorted(p.name for p in folder.glob("v*")) == ["v000001.json", "v000001.lexicon", "v000001.lm",
                                                         "v000001.safetensors"]  # fmt: skip
    assert reopened.publish("acme/en", eng).version == 2
