"""Typed results of the Chorus HTTP API, mirroring the server's JSON (extra fields are kept, not rejected)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
TEXT_FORMATS: frozenset[str] = frozenset({"text", "srt", "vtt"})


class _Model(BaseModel):
    # A newer server may add fields; an older client must still read its answers.
    model_config = ConfigDict(extra="allow")


class Word(_Model):
    word: str
    start: float
    end: float


class Segment(_Model):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None


class Transcription(_Model):
    """`response_format="json"`: the text, plus words when word timestamps were asked for."""

    text: str
    words: list[Word] | None = None
    adapter: str | None = None
    """The exact adapter version that served the request (`ID@N`, from the `x-chorus-adapter` header)."""


class VerboseTranscription(Transcription):
    """`response_format="verbose_json"`: OpenAI's verbose shape."""

    task: str = "transcribe"
    language: str = ""
    duration: float = 0.0
    segments: list[Segment] | None = None


class LabelScore(_Model):
    label: str
    score: float


class Classification(_Model):
    """`POST /v1/audio/classifications`: the classifier's labels with their probabilities, highest first."""

    model: str
    """The exact adapter version that served the request (`ID@N`)."""
    labels: list[LabelScore]

    @property
    def top(self) -> str:
        """The most probable label."""
        return self.labels[0].label


class Adapter(_Model):
    id: str
    object: str = "adapter"
    version: int
    versions: list[int] = Field(default_factory=list)
    owner: str
    visibility: str
    kind: str
    language: str = ""
    task: str = ""
    vocab_size: int = 0
    bottleneck_dim: int = 0
    layers: list[int] = Field(default_factory=list)
    size: int = 0
    sha256: str = ""
    created_at: float = 0.0
    backbone_fingerprint: str = ""
    resident: bool = False
    pinned: bool = False
    lm: dict[str, Any] | None = None
    """The version's language model (`size`, `sha256`, `format`: arpa or kenlm, `order`), if it has one."""
    lexicon: dict[str, Any] | None = None
    """The version's lexicon (`size`, `sha256`, `words`), if it has one."""
    beam: dict[str, float] = Field(default_factory=dict)
    """The version's beam-setting overrides."""

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"


class AdapterPage(_Model):
    object: str = "list"
    data: list[Adapter]
    next_cursor: str | None = None


class Model(_Model):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""


class ModelList(_Model):
    object: str = "list"
    data: list[Model]


class Deleted(_Model):
    id: str
    deleted: bool
    version: int | None = None


class Health(_Model):
    status: str


def parse_transcription(payload: dict[str, Any], response_format: str, adapter: str | None) -> Transcription:
    cls = VerboseTranscription if response_format == "verbose_json" else Transcription
    return cls.model_validate({**payload, "adapter": adapter})
