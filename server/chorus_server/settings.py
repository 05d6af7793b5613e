"""Server settings: environment variables `CHORUS_*` (nested groups with `__`, e.g. `CHORUS_BATCH__MAX_ITEMS`)
or a `.env` file. Every field is typed, bounded and documented; `docs/server.md` lists them all."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class BatchSettings(BaseModel):
    """Dynamic batching. Unset fields take a per-device default (see `resolve_batch_limits`)."""

    max_items: int | None = Field(
        None, ge=1, le=1024, description="most audio windows in one forward pass (CPU default 4, GPU 64)"
    )
    max_audio_seconds: float | None = Field(
        None,
        gt=0,
        le=36000,
        description="most padded audio seconds in one pass, items x longest item (CPU default 60, GPU 1200)",
    )
    max_wait_ms: float = Field(
        10.0,
        ge=0,
        le=10_000,
        description="how long the oldest item may wait for company while other requests are in flight",
    )
    chunk_seconds: float = Field(20.0, ge=2, le=120, description="long audio is cut into windows this long")
    stride_seconds: float = Field(
        2.0, ge=0, le=30, description="context on each side of a chunk that is computed but dropped"
    )
    priorities: bool = Field(
        True,
        description="live work (realtime steps, a streamed transcription's first window) runs before file windows, "
        "and those before service_tier=flex files; false: one queue for all, as before",
    )
    bulk_passes: int = Field(
        8, ge=1, le=1000, description="batches in a row that may run while less urgent work waits; then it gets one"
    )
    bulk_audio_seconds_beside_live: float | None = Field(
        None,
        gt=0,
        le=36000,
        description="most padded audio seconds in a file batch while live work waits or was seen within "
        "live_linger_ms: a live step waits at most one such batch (default: one file window, chunk_seconds, "
        "or a tenth of max_audio_seconds if larger)",
    )
    live_linger_ms: float = Field(
        1000.0, ge=0, le=60_000, description="how long after live work was last queued file batches stay small"
    )
    warmup_seconds: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="GPU only: longest warm-up (one dummy batch per shape bucket, largest first) before /readyz "
        "turns green; 0: none",
    )


class VadSettings(BaseModel):
    """Voice activity detection (Silero VAD): silence is skipped and long audio is cut at pauses. A request's
    `chunking_strategy` (`auto`, or a `server_vad` object) overrides the threshold, silence and padding."""

    enabled: bool = Field(True, description="skip silence and cut at pauses when a request names no chunking_strategy")
    threshold: float = Field(0.5, gt=0, lt=1, description="speech probability at which speech starts")
    silence_ms: int = Field(500, ge=0, le=10_000, description="a pause at least this long ends a speech region")
    padding_ms: int = Field(200, ge=0, le=10_000, description="audio kept before and after each speech region")
    min_speech_ms: int = Field(250, ge=0, le=10_000, description="shorter bursts of sound are not speech")


class TenantLimits(BaseModel):
    """Each tenant's limits (defaults; per-tenant overrides: `PUT /v1/tenants/{tenant}/limits`). None: unlimited."""

    requests_per_minute: float | None = Field(600, gt=0, description="transcription requests per minute; beyond: 429")
    audio_seconds_per_minute: float | None = Field(
        3600, gt=0, description="audio seconds transcribed per minute (a token bucket); beyond: 429"
    )
    audio_seconds_per_day: float | None = Field(
        None, gt=0, description="audio seconds per UTC day, persisted across restarts; beyond: 429"
    )
    concurrent_requests: int = Field(64, ge=1, description="transcriptions in progress at once; beyond: 429")
    storage_bytes: int | None = Field(
        10 * 1024 * MiB, ge=0, description="adapter bytes stored (every version); beyond: 507"
    )


class LimitSettings(BaseModel):
    max_audio_bytes: int = Field(25 * MiB, ge=1024, description="largest transcription upload (OpenAI: 25 MB)")
    max_audio_seconds: float = Field(1800.0, gt=0, description="longest audio accepted, checked before decoding")
    max_adapter_bytes: int = Field(512 * MiB, ge=1024, description="largest adapter upload")
    max_lm_bytes: int = Field(
        256 * MiB, ge=1024, description="largest language model (ARPA or KenLM binary) stored with an adapter version"
    )
    max_lexicon_bytes: int = Field(16 * MiB, ge=1024, description="largest lexicon stored with an adapter version")
    max_lexicon_words: int = Field(
        1_000_000, ge=1, description="most words in a lexicon stored with an adapter version"
    )
    max_hotwords: int = Field(
        100, ge=0, le=10_000, description="most words of a request's `prompt` boosted as hotwords; the rest are ignored"
    )
    max_queue_audio_seconds: float = Field(
        900.0, gt=0, description="audio admitted but not yet run; beyond it requests get 503 + Retry-After"
    )
    max_decoded_audio_bytes: int = Field(
        256 * MiB,
        ge=MiB,
        description="decoded audio held in memory by requests being decoded or queued; beyond: 503 + Retry-After",
    )
    request_timeout_seconds: float = Field(120.0, gt=0, description="deadline per request; past it 504")
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="longest wait for the next piece of a request body; beyond: 408"
    )
    body_deadline_seconds: float = Field(
        300.0, gt=0, description="longest time to receive a whole request body, from its first read; beyond: 408"
    )
    body_min_bytes_per_second: float = Field(
        1024.0,
        ge=0,
        description="slowest average a request body may arrive at once the grace period is over; beyond: 408 "
        "(0: no minimum)",
    )
    body_rate_grace_seconds: float = Field(
        10.0, ge=0, description="time a request body is given before its minimum rate applies"
    )
    body_readers_per_tenant: int = Field(
        128,
        ge=1,
        description="request bodies one tenant may be sending at once (keep well below "
        "CHORUS_SERVER__MAX_CONNECTIONS); beyond: 429",
    )
    tenant: TenantLimits = Field(default_factory=TenantLimits)


class CacheSettings(BaseModel):
    device_budget_mb: int = Field(2048, ge=1, description="adapter bytes resident on the device")
    host_budget_mb: int = Field(8192, ge=1, description="adapter bytes kept in host RAM (CPU: the only tier)")
    loader_threads: int = Field(2, ge=1, le=64, description="threads reading adapters from the store")
    decoder_budget_mb: int = Field(
        2048,
        ge=1,
        description="memory for beam-search decoders (an adapter version's language model and lexicon trie, "
        "about 1.3 KB per lexicon word), least recently used out; a version needing more alone decodes greedily",
    )
    decoding_files_mb: int = Field(
        4096,
        ge=1,
        description="local disk for copies of an S3 store's decoding files (language models, lexicons), least "
        "recently used out; a copy removed while in use is fetched again",
    )
    watch_seconds: float = Field(
        2.0, gt=0, description="how often cached adapters are checked against the store (deletes via other workers)"
    )


class AuthSettings(BaseModel):
    """API keys and anonymous access (docs/security.md). Keys from `chorus keys create` live hashed in `key_file`;
    the environment keys below suit simple setups and are hashed at start-up."""

    keys: dict[str, str] = Field(
        default_factory=dict,
        description='API key (or "sha256:<hex>" of it) -> "tenant" or "tenant:role" (role: operator by default)',
    )
    admin_keys: list[str] = Field(default_factory=list, description='admin keys (or "sha256:<hex>"), tenant "admin"')
    key_file: Path | None = Field(None, description="SQLite file of created keys; unset: DATA_DIR/keys.sqlite3")
    db_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="longest wait for another process's lock on the key file (keys, tenant limits, usage); "
        "beyond: 503 tenant_database_unavailable",
    )
    anonymous: Literal["auto", "none", "user", "operator"] = Field(
        "auto",
        description="role of callers without a key; auto: operator of tenant 'anonymous' when no key exists "
        "(loopback only), else none. On other interfaces only 'user' or 'none' are allowed",
    )


class ServerSettings(BaseModel):
    """Connections (used by `chorus serve`)."""

    max_connections: int = Field(
        4096, ge=1, description="open connections at once; beyond: 503 (keep below the open-file limit)"
    )
    idle_timeout_seconds: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="a connection that has not sent a complete request head by then is closed"
    )
    shutdown_timeout_seconds: float = Field(
        30.0, gt=0, description="on SIGTERM, longest wait for requests in progress before exiting"
    )


class RealtimeSettings(BaseModel):
    """Realtime transcription sessions over WebSocket (`GET /v1/realtime?intent=transcription`)."""

    max_sessions_per_tenant: int = Field(
        16, ge=0, description="open realtime sessions per tenant; beyond: the WebSocket is refused with 429"
    )
    idle_timeout_seconds: float = Field(
        60.0, gt=0, description="a session that sends no event for this long gets an error event and is closed"
    )
    max_buffer_seconds: float = Field(
        10.0, gt=0, description="audio a session sent that is not transcribed yet; appends beyond it are refused"
    )
    max_event_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="largest client event (one WebSocket message); beyond: an event_too_large error and close 1009",
    )
    max_turn_seconds: float = Field(
        60.0, gt=0, le=1800, description="a turn this long is committed as if the speaker had paused"
    )
    step_ms: int = Field(
        320, ge=20, le=5000, description="audio per incremental step (a multiple of 20 ms): partial text this often"
    )
    busy_step_ms: int = Field(
        640,
        ge=20,
        le=5000,
        description="least audio per step while file work waits for the backbone (fewer recomputed left contexts)",
    )
    left_context_seconds: float = Field(
        2.0, ge=0, le=30, description="audio before each step computed with it, so its text matches a longer pass"
    )
    lookahead_ms: int = Field(
        100, ge=20, le=2000, description="audio after a step awaited before the step is computed (accuracy vs latency)"
    )


class RoutingSettings(BaseModel):
    """`model=auto`: a language-ID classifier picks the transcription adapter (docs/server.md, "model=auto")."""

    language_adapter: str = Field(
        "lid", min_length=1, description="classifier adapter that detects the language (seeded with the demo model)"
    )
    languages: dict[str, str] = Field(
        default_factory=dict,
        description='language label -> transcription adapter ID (JSON, e.g. {"fr": "acme/fr-call"}); a label not '
        "listed goes to the adapter named like the label",
    )
    detect_seconds: float = Field(
        30.0, gt=0, le=600, description="audio from the start that language detection listens to"
    )
    one_pass_max_candidates: int = Field(
        8,
        ge=0,
        le=64,
        description="detect inside the transcription's backbone pass when the placement allows and the language-ID "
        "adapter's labels map to at most this many adapters (each held resident for the request); 0: never",
    )


class ClusterSettings(BaseModel):
    """`chorus serve --ray` (docs/scale-out.md, section 3)."""

    num_gpus: float | None = Field(
        None,
        ge=0,
        le=64,
        description="GPUs each worker replica asks Ray for (a fraction shares one GPU between workers; "
        "`--gpus-per-worker`); unset: 1 when the Ray cluster has GPUs, else 0",
    )
    worker_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads each worker replica's inference uses (Ray would give a replica that asks for no "
        "CPU one thread); unset: the deploying machine's CPUs divided by the workers each node runs",
    )
    affinity_slack: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="requests in flight a worker holding the adapter may have beyond the least-loaded worker and "
        "still be chosen (0: a holder must be as idle as the idlest worker)",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHORUS_", env_nested_delimiter="__", env_file=".env", extra="ignore")

    backbone: Path | None = Field(
        None, description="local HF wav2vec 2.0 directory; unset: the bundled demo model, else a tiny random one"
    )
    store: str = Field(
        "data/store",
        description="adapter store: a local directory, or s3://bucket/prefix (endpoint and credentials from AWS_*)",
    )
    data_dir: Path = Field(Path("data"), description="where first-start files (random backbone) are written")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto: the current CUDA device when present, else cpu; cuda:N picks a GPU (mps: unsupported)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: bfloat16 where the hardware runs it natively (AVX-512 BF16/AMX CPUs, GPUs of compute "
        "capability 8+), else float32 on CPU, float16 on older GPUs",
    )
    default_adapter: str | None = Field(
        None, description="adapter used when a request names `whisper-1` (OpenAI clients' default model)"
    )
    audit_log: Path | None = Field(
        None, description="also append every audit entry to this JSON-lines file; unset: only the audit table"
    )
    database_url: str | None = Field(
        None,
        description="tenant database (keys, limits, usage, audit): postgresql://user@host:port/db; unset: the "
        "SQLite file CHORUS_AUTH__KEY_FILE",
    )
    database_timeout_seconds: float = Field(
        3.0,
        ge=0.5,
        le=60,
        description="PostgreSQL: longest wait for a connection, to connect, or for one statement; beyond: 503 "
        "tenant_database_unavailable",
    )
    database_pool_size: int = Field(
        10, ge=1, le=200, description="PostgreSQL: connections per pool (two pools: keys/audit, limits/usage)"
    )
    seed_store: bool = Field(True, description="on first start, publish the bundled demo adapters to the store")
    max_adapter_label_values: int = Field(
        50, ge=1, le=1000, description="distinct adapter label values in metrics; the rest count as 'other'"
    )
    batch: BatchSettings = Field(default_factory=BatchSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)


@lru_cache
def get_settings() -> Settings:
    return Settings()
