"""An adapter version's decoding files: an n-gram language model (ARPA text or KenLM binary) and a lexicon (one
word per line), stored beside the version's tensors, plus its beam-search setting overrides.

Each file is checked while it is copied to the store's staging area, in one streaming pass with bounded memory
(one line at a time, at most `MAX_LINE_BYTES` long), so a hostile upload is refused before anything is stored:

- ARPA: `\\data\\`, then `ngram N=count` for N = 1, 2, ... (at most `MAX_ORDER`), then each `\\N-grams:` section in
  order with exactly the declared number of entries (`logprob w1 .. wN [backoff]`; NaN and +inf refused), then
  `\\end\\`.
  Declared counts larger than the file could hold are refused at the header.
- KenLM binary: its magic and format version (KenLM loads the rest itself; nothing is ever unpickled), then
  `DecodingLimits.check_binary` on the staged file where the server gives one (it loads the file in a child
  process).
- Lexicon: UTF-8, one word per line, every character one the adapter's vocabulary can spell.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import xxhash

from chorus_store.errors import AdapterRejected

DecodingKind = Literal["lm", "lexicon"]
KINDS: tuple[DecodingKind, ...] = ("lm", "lexicon")
SUFFIX: dict[DecodingKind, str] = {"lm": ".lm", "lexicon": ".lexicon"}

CHUNK = 1 << 20
MAX_LINE_BYTES = 64 * 1024  # longer lines are refused (an n-gram line is a few words)
MAX_ORDER = 6  # KenLM's default build (KENLM_MAX_ORDER=6) loads no higher order
MAX_WORD_CHARS = 100
MAX_BEAM_OVERRIDES = 16
KENLM_MAGIC = b"mmap lm http://kheafield.com/code format version "
KENLM_VERSIONS = (b"5\n\0",)  # what current KenLM writes and reads
MIN_ARPA_ENTRY_BYTES = 4  # "-1 a\n": a file of S bytes holds at most S / 4 n-grams
GZIP_MAGIC = b"\x1f\x8b"
_NGRAM = re.compile(rb"ngram ([0-9]{1,2})=([0-9]{1,18})", re.ASCII)
_SECTION = re.compile(rb"\\([0-9]{1,2})-grams:", re.ASCII)
FIX_ARPA = "write it with KenLM's lmplz (or build_binary for the binary form) and upload it again"


@dataclass(frozen=True)
class DecodingLimits:
    """Largest decoding files a store accepts (the server's settings: CHORUS_LIMITS__MAX_LM_BYTES, ...), and
    `check_binary`: a further check of a staged KenLM binary, which raises `AdapterRejected` (the server's loads
    it in a child process; without one a binary is stored on its magic and version)."""

    max_lm_bytes: int = 256 * 1024 * 1024
    max_lexicon_bytes: int = 16 * 1024 * 1024
    max_lexicon_words: int = 1_000_000
    check_binary: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class DecodingUpload:
    """What a publish may carry besides the adapter file: `lm` and `lexicon` (a path or an open binary file; None:
    absent) and `beam`, the version's beam-setting overrides (already checked by the server: names -> numbers)."""

    lm: Path | BinaryIO | None = None
    lexicon: Path | BinaryIO | None = None
    beam: dict[str, float] = field(default_factory=dict)

    def source(self, kind: DecodingKind) -> Path | BinaryIO | None:
        return self.lm if kind == "lm" else self.lexicon

    @property
    def empty(self) -> bool:
        return self.lm is None and self.lexicon is None and not self.beam


def check_beam(beam: Any) -> dict[str, float]:
    """The overrides' shape only (names -> finite numbers); what each means and its range the server checks."""
    if not isinstance(beam, dict) or len(beam) > MAX_BEAM_OVERRIDES:
        raise AdapterRejected(f"beam settings must be a mapping of at most {MAX_BEAM_OVERRIDES} names to numbers")
    for name, value in beam.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not isinstance(name, str) or not name.isidentifier() or not number or not math.isfinite(value):
            raise AdapterRejected(f"beam setting {str(name)[:40]!r} must be a finite number")
    return dict(beam)


# ---- streaming checks ------------------------------------------------------------------------------------------


class _Lines:
    """Lines of a stream as it is copied (bytes, without the newline), each at most MAX_LINE_BYTES; counts them."""

    def __init__(self, what: str):
        self.what, self.number, self._pending = what, 0, b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The chunk's complete lines; `number` is then the last one's (the first's is `number - len + 1`)."""
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        if len(self._pending) > MAX_LINE_BYTES:
            raise self.error(f"line {self.number + len(lines) + 1} is longer than {MAX_LINE_BYTES} bytes")
        if len(data) - len(self._pending) > MAX_LINE_BYTES:  # only then can a line be too long
            for i, line in enumerate(lines):
                if len(line) > MAX_LINE_BYTES:
                    raise self.error(f"line {self.number + i + 1} is longer than {MAX_LINE_BYTES} bytes")
        self.number += len(lines)
        return lines

    def finish(self) -> list[bytes]:
        """The last line, if the stream does not end with a newline."""
        last, self._pending = self._pending, b""
        if last:
            self.number += 1
        return [last] if last else []

    def error(self, message: str) -> AdapterRejected:
        return AdapterRejected(f"{self.what}: {message}")


def _shown(text: bytes, limit: int) -> str:
    """Part of an uploaded line, quoted for a message (never its raw bytes)."""
    return repr(text[:limit].decode("utf-8", errors="replace"))


class ArpaCheck:
    """Checks an ARPA file line by line (bounded memory: counters only). `size`: the whole file's bytes."""

    def __init__(self, size: int):
        self.size = size
        self.lines = _Lines("the language model (ARPA)")
        self.state = "start"  # start -> counts -> sections -> end
        self.counts: list[int] = []
        self.order = 0  # the section being read
        self.seen = 0
        self.sentence_marks: set[bytes] = set()
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.utf8_ok = True

    def feed(self, chunk: bytes) -> None:
        try:
            self.utf8.decode(chunk)  # the whole text at C speed; the lines below need not decode
        except UnicodeDecodeError:
            self.utf8_ok = False  # the per-line check finds the line at fault
        lines = self.lines.feed(chunk)
        first = self.lines.number - len(lines) + 1
        for i, line in enumerate(lines):
            if self.state != "sections" or not self._entry_fast(line):
                self.lines.number = first + i  # the slow path reports this line in its errors
                self._line(line)
        self.lines.number = first + len(lines) - 1

    def _entry_fast(self, line: bytes) -> bool:
        """An ordinary n-gram line, checked inline (most of a model's lines); False: let `_line` judge it."""
        fields = line.split()
        if not fields:
            return True
        order = self.order
        if not order or fields[0].startswith(b"\\") or not self.utf8_ok or self.seen >= self.counts[order - 1]:
            return False
        n = len(fields)
        if n != order + 1 and (n != order + 2 or order == len(self.counts)):
            return False
        try:
            probability, backoff = float(fields[0]), float(fields[-1]) if n == order + 2 else 0.0
        except ValueError:
            return False
        if probability != probability or backoff != backoff or math.inf in (probability, backoff):
            return False
        self.seen += 1
        if order == 1 and fields[1] in (b"<s>", b"</s>"):
            self.sentence_marks.add(fields[1])
        return True

    def finish(self) -> int:
        """Ends the check; returns the model's order."""
        for line in self.lines.finish():
            self._line(line)
        if self.state != "end":
            raise self._error("the file ends before its \\end\\ line (truncated?)")
        return len(self.counts)

    def _error(self, message: str) -> AdapterRejected:
        return self.lines.error(f"line {self.lines.number}: {message}; {FIX_ARPA}")

    def _line(self, line: bytes) -> None:
        text = line.strip()
        if self.state == "start":
            if text == b"\\data\\":
                self.state = "counts"
            elif text:
                raise self._error("expected the \\data\\ header first")
        elif self.state == "counts":
            self._count_line(text)
        elif self.state == "sections":
            self._section_line(text)
        elif text:  # after \end\
            raise self._error("text after \\end\\")

    def _count_line(self, text: bytes) -> None:
        if not text:
            return
        match = _NGRAM.fullmatch(text)
        if match is not None:
            n, count = int(match[1]), int(match[2])
            if n != len(self.counts) + 1:
                raise self._error(f"expected 'ngram {len(self.counts) + 1}=<count>', found order {n}")
            if n > MAX_ORDER:
                raise self._error(f"order {n} is above the highest order served, {MAX_ORDER}")
            total = sum(self.counts) + count
            if total * MIN_ARPA_ENTRY_BYTES > self.size:
                raise self._error(f"the header declares {total} n-grams, more than a {self.size}-byte file holds")
            self.counts.append(count)
            return
        if not self.counts:
            raise self._error("expected 'ngram 1=<count>' after \\data\\")
        self.state = "sections"
        self._section_line(text)

    def _section_line(self, text: bytes) -> None:
        if not text:
            return
        if text.startswith(b"\\"):
            self._close_section()
            match = _SECTION.fullmatch(text)
            if text == b"\\end\\":
                if self.order != len(self.counts):
                    raise self._error(f"\\end\\ after {self.order} of {len(self.counts)} sections")
                if self.counts[0] and not {b"<s>", b"</s>"} <= self.sentence_marks:
                    raise self._error("the 1-grams lack <s> or </s>")
                self.state = "end"
            elif match is None or int(match[1]) != self.order + 1 or self.order >= len(self.counts):
                raise self._error(f"expected \\{self.order + 1}-grams: or \\end\\, found {_shown(text, 40)}")
            else:
                self.order, self.seen = self.order + 1, 0
            return
        if self.order == 0:
            raise self._error(f"expected \\1-grams:, found {_shown(text, 40)}")
        self._entry(text)

    def _close_section(self) -> None:
        if self.order and self.seen != self.counts[self.order - 1]:
            declared = self.counts[self.order - 1]
            raise self._error(f"the {self.order}-grams section has {self.seen} entries, the header declares {declared}")

    def _entry(self, text: bytes) -> None:
        self.seen += 1
        if self.seen > self.counts[self.order - 1]:
            raise self._error(f"more {self.order}-grams than the {self.counts[self.order - 1]} declared")
        fields = text.split()
        backoff = self.order < len(self.counts)  # only orders below the highest carry a backoff weight
        if len(fields) not in ((self.order + 1, self.order + 2) if backoff else (self.order + 1,)):
            raise self._error(f"a {self.order}-gram line needs a log-probability and {self.order} word(s)")
        numbers = [fields[0], *fields[self.order + 1 :]]
        for number in numbers:
            try:
                value = float(number)
            except ValueError:
                raise self._error(f"{_shown(number, 20)} is not a number") from None
            if math.isnan(value) or value == math.inf:  # -inf is log10(0), which KenLM reads
                raise self._error(f"{_shown(number, 20)} is not a log10 value (NaN or +inf)")
        try:
            b" ".join(fields[1 : self.order + 1]).decode()
        except UnicodeDecodeError:
            raise self._error("words must be UTF-8") from None
        if self.order == 1 and fields[1] in (b"<s>", b"</s>"):
            self.sentence_marks.add(fields[1])


class KenlmBinaryCheck:
    """A KenLM binary: only its magic and version can be checked without loading it (the decoder loads it)."""

    def __init__(self) -> None:
        self.head = b""

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < len(KENLM_MAGIC) + 8:
            self.head += chunk[: len(KENLM_MAGIC) + 8]

    def finish(self) -> int:
        version = self.head[len(KENLM_MAGIC) :]
        if not self.head.startswith(KENLM_MAGIC) or not version.startswith(KENLM_VERSIONS):
            raise AdapterRejected(
                "the language model is a KenLM binary of an unsupported format version; rebuild it with a current "
                "KenLM build_binary, or upload the ARPA file"
            )
        return 0


class LexiconCheck:
    """One word per line, every character in `symbols` (what the adapter's vocabulary spells); counts words."""

    def __init__(self, symbols: frozenset[str], max_words: int):
        self.symbols, self.max_words = symbols, max_words
        self.lines = _Lines("the lexicon")
        self.words = 0

    def feed(self, chunk: bytes) -> None:
        lines = self.lines.feed(chunk)
        first = self.lines.number - len(lines) + 1
        for i, line in enumerate(lines):
            self.lines.number = first + i  # named in the errors
            self._line(line)

    def finish(self) -> int:
        for line in self.lines.finish():
            self._line(line)
        if self.words == 0:
            raise self.lines.error("it has no words; write one word per line")
        return self.words

    def _line(self, line: bytes) -> None:
        where = f"line {self.lines.number}"
        try:
            word = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise self.lines.error(f"{where} is not UTF-8; save the lexicon as UTF-8") from None
        if not word:
            return
        if len(word.split()) != 1:
            raise self.lines.error(f"{where} has more than one word; write one word per line")
        if len(word) > MAX_WORD_CHARS:
            raise self.lines.error(f"{where}: a word is longer than {MAX_WORD_CHARS} characters")
        outside = sorted({c for c in word if c not in self.symbols})
        if outside:
            shown = ", ".join(repr(c) for c in outside[:5])
            raise self.lines.error(
                f"{where}: {word[:40]!r} uses {shown}, outside the adapter's vocabulary; spell every word with the "
                f"adapter's characters ({''.join(sorted(self.symbols))[:80]!r})"
            )
        self.words += 1
        if self.words > self.max_words:
            raise self.lines.error(f"more than {self.max_words} words (CHORUS_LIMITS__MAX_LEXICON_WORDS)")


# ---- receiving an upload ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodingFileInfo:
    """What the record keeps of one stored decoding file."""

    size: int
    sha256: str
    xxh3: str
    detail: dict[str, Any]  # lm: format and order; lexicon: words

    def to_record(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "xxh3": self.xxh3, **self.detail}


def _source_size(source: Path | BinaryIO) -> int | None:
    with contextlib.suppress(OSError, AttributeError, ValueError):
        if isinstance(source, Path):
            return source.stat().st_size
        position = source.tell()
        end = source.seek(0, 2)
        source.seek(position)
        return end - position
    return None


def receive(
    kind: DecodingKind,
    source: Path | BinaryIO,
    out: BinaryIO,
    limits: DecodingLimits,
    symbols: frozenset[str],
) -> DecodingFileInfo:
    """Copy one decoding file to `out`, checking it on the way (size cap, format); raises `AdapterRejected`."""
    name = "language model" if kind == "lm" else "lexicon"
    limit = limits.max_lm_bytes if kind == "lm" else limits.max_lexicon_bytes
    setting = "MAX_LM_BYTES" if kind == "lm" else "MAX_LEXICON_BYTES"
    too_large = AdapterRejected(
        f"the {name} exceeds the {limit}-byte limit (CHORUS_LIMITS__{setting}); prune it (KenLM: lmplz --prune, "
        "or a smaller vocabulary) or raise the limit"
    )
    size = _source_size(source)
    if size is not None and size > limit:
        raise too_large
    sha, fast, total = hashlib.sha256(), xxhash.xxh3_128(), 0
    check: ArpaCheck | KenlmBinaryCheck | LexiconCheck | None = None
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
        while chunk := reader.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise too_large
            if check is None:
                check = _checker(kind, chunk, size, limit, symbols, limits)
            check.feed(chunk)
            sha.update(chunk)
            fast.update(chunk)
            out.write(chunk)
        out.flush()
    if check is None:
        raise AdapterRejected(f"the {name} file is empty")
    result = check.finish()
    if kind == "lexicon":
        detail: dict[str, Any] = {"words": result}
    else:
        detail = {"format": "kenlm" if isinstance(check, KenlmBinaryCheck) else "arpa", "order": result or None}
    return DecodingFileInfo(total, sha.hexdigest(), fast.hexdigest(), detail)


def _checker(
    kind: DecodingKind, first: bytes, size: int | None, limit: int, symbols: frozenset[str], limits: DecodingLimits
) -> ArpaCheck | KenlmBinaryCheck | LexiconCheck:
    if kind == "lexicon":
        return LexiconCheck(symbols, limits.max_lexicon_words)
    if first.startswith(KENLM_MAGIC[:8]):
        return KenlmBinaryCheck()
    if first.startswith(GZIP_MAGIC):
        raise AdapterRejected("the language model is gzip-compressed; upload the decompressed ARPA file")
    return ArpaCheck(size if size is not None else limit)


def verify_file(path: Path, info: dict[str, Any], what: str) -> None:
    """A stored decoding file against its record (size, then xxh3); raises `AdapterCorrupt`."""
    from chorus_store.errors import AdapterCorrupt

    fast, size = xxhash.xxh3_128(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            size += len(chunk)
            fast.update(chunk)
    if size != info.get("size") or fast.hexdigest() != info.get("xxh3"):
        raise AdapterCorrupt(f"{what} is corrupt in the store (checksum mismatch); publish the adapter again")
