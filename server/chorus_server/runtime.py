"""Everything the server holds while it runs, built once at start-up (in the app's lifespan) and closed at exit:
backbone engine, adapter store, adapter cache, inference worker, metrics, authenticator, transcriber."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chorus_server import speech
from chorus_server.audit import AuditLog, audit_export
from chorus_server.auth import Authenticator, anonymous_role, env_keys
from chorus_server.batching import BatchLimits
from chorus_server.decoding.binary_check import check_kenlm_binary
from chorus_server.decoding.files import language_model_files
from chorus_server.decoding.resources import LOADED
from chorus_server.demo_model import DEMO_DIR
from chorus_server.engine import Adapter, Engine, save_adapter, threads
from chorus_server.engine.adapter_format import read_adapter_file
from chorus_server.engine.adapters import CLASSIFIER
from chorus_server.engine.cache import AdapterCache
from chorus_server.engine.device import choose_dtype, resolve_device
from chorus_server.engine.random_model import write_random_model
from chorus_server.engine.staging import bucket_schedule
from chorus_server.engine.upload import AdapterUploader
from chorus_server.engine.warmup import warm_up_adapters, warm_up_batch
from chorus_server.inference import Inference, LocalInference, Remote
from chorus_server.metrics import Metrics
from chorus_server.residency import NoResidency, Residency
from chorus_server.service import Intake, Transcriber
from chorus_server.settings import BatchSettings, Settings
from chorus_server.store_watch import StoreWatcher
from chorus_server.tenants import open_tenant_store
from chorus_server.tenants.base import TenantStore
from chorus_server.tenants.keys import KeyRing
from chorus_server.tenants.quotas import Quotas
from chorus_server.tenants.storage_quota import UploadReservations
from chorus_server.tenants.watch import ChangeWatch
from chorus_server.validation import BackboneInfo, BackboneValidator
from chorus_server.worker import WarmUp, Worker
from chorus_store.base import AdapterRecord, AdapterStore
from chorus_store.decoding_files import DecodingLimits, DecodingUpload
from chorus_store.errors import AdapterRejected, StoreError
from chorus_store.loader import make_loader
from chorus_store.local import LocalStore

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
SEED_OWNER = "chorus"  # the namespace of the adapters published on first start (public)


@dataclass(frozen=True)
class ModelSource:
    backbone: Path
    seed_adapters: list[Path]  # native adapter files published to an empty store on first start
    head_id: str  # the ID the backbone's own CTC head is published under
    head_language: str | None = None  # its language, where the checkpoint's flat vocab.json cannot say
    lm_dir: Path | None = None  # `<lang>/lm.arpa` and `<lang>/lexicon.txt`: stored with the seeded adapters


def model_source(settings: Settings) -> ModelSource:
    """The configured backbone, else the bundled demo model, else a tiny random model written on first start."""
    if settings.backbone is not None:
        return ModelSource(settings.backbone, [], "default")
    demo = DEMO_DIR / "backbone"
    if (demo / "config.json").is_file():
        adapters = sorted((DEMO_DIR / "adapters").glob("*.safetensors"))
        return ModelSource(demo, adapters, "en", "en", DEMO_DIR / "lm")
    random_dir = settings.data_dir / "random-model"
    if not (random_dir / "config.json").is_file():
        random_dir.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".random-model-", dir=random_dir.parent))
        write_random_model(scratch, "tiny", num_adapters=2, seed=0)
        try:
            os.rename(scratch, random_dir)
        except OSError:  # another process won the race; use its copy
            shutil.rmtree(scratch, ignore_errors=True)
    logger.warning(
        "*** NO MODEL CONFIGURED: serving a tiny RANDOM model from %s; its transcripts are gibberish. "
        "Set CHORUS_BACKBONE to a wav2vec 2.0 directory for real transcripts. ***",
        random_dir,
    )
    return ModelSource(random_dir, sorted((random_dir / "adapters").glob("*.safetensors")), "default")


def resolve_batch_limits(batch: BatchSettings, device: torch.device, rate: int) -> BatchLimits:
    """Per-device defaults: on CPUs throughput per audio second stops rising at about 4 items while latency keeps
    growing; GPUs need large batches to be busy (docs/server.md)."""
    on_gpu = device.type != "cpu"
    max_items = batch.max_items or (64 if on_gpu else 4)
    max_seconds = batch.max_audio_seconds or (1200.0 if on_gpu else 60.0)
    window = batch.chunk_seconds  # the longest window a file is cut into (its strides included)
    beside_live = batch.bulk_audio_seconds_beside_live or max(window, max_seconds / 10)
    return BatchLimits(
        max_items,
        int(max_seconds * rate),
        batch.max_wait_ms / 1000,
        priorities=batch.priorities,
        bulk_passes=batch.bulk_passes,
        interactive_bulk_samples=int(min(beside_live, max_seconds) * rate),
        interactive_linger=batch.live_linger_ms / 1000,
    )


def warm_up_plan(engine: Engine, limits: BatchLimits, batch: BatchSettings) -> WarmUp | None:
    """A dummy batch per shape bucket up to the longest window the server cuts (or the batch budget allows)."""
    if batch.warmup_seconds <= 0:
        return None
    rate = engine.preprocess.sampling_rate
    longest = min(int(batch.chunk_seconds * rate), limits.max_samples)
    run = functools.partial(warm_up_batch, engine, warm_up_adapters(engine))
    return WarmUp(run, bucket_schedule(longest, rate), batch.warmup_seconds)


def adapter_cache(
    store: AdapterStore,
    validator: BackboneValidator,
    engine: Engine,
    device_budget: int,
    host_budget: int,
    executor: ThreadPoolExecutor | None = None,
) -> AdapterCache:
    """The cache of adapters from `store`: loaded and checked by `validator` (the check publish ran), then moved to
    the engine's device and dtype. The loader already checked the fit and kept a version's fingerprint override.
    On CUDA the host tier is pinned and loads copy on the loader threads' own streams (engine/upload.py)."""
    uploader = AdapterUploader(engine)

    def build(data: bytearray, record: AdapterRecord) -> Adapter:
        adapter = validator.load_version(data, record)
        adapter.language_model = language_model_files(store, record)  # its LM and lexicon, on local disk
        return adapter

    load = make_loader(store, build)
    return AdapterCache(
        lambda key: uploader.pin(load(key)),
        uploader,
        engine.device,
        device_budget,
        host_budget,
        executor=executor,
        host_bytes=uploader.host_bytes,  # on CUDA the pinned blocks, as the allocator rounds them
    )


@dataclass
class Runtime:
    settings: Settings
    backbone: BackboneInfo
    engine: Engine | None  # None on a cluster ingress: its workers run the backbone
    store: AdapterStore
    cache: Residency  # the adapter cache (an AdapterCache) where the backbone runs
    worker: Worker | None  # the inference worker; None on a cluster ingress
    metrics: Metrics
    auth: Authenticator
    audit: AuditLog
    quotas: Quotas
    transcriber: Intake  # a Transcriber where the backbone runs
    loaders: ThreadPoolExecutor | None
    pinned: dict[str, str]  # adapter ID -> pinned version ref
    watcher: StoreWatcher
    tenants: TenantStore
    changes: ChangeWatch
    inference: Inference  # where requests run on the backbone: here, or on a cluster's workers
    uploads: UploadReservations = field(default_factory=UploadReservations)  # adapter bytes in flight, per tenant

    @classmethod
    def start(cls, settings: Settings, remote: Remote | None = None) -> Runtime:
        """`remote`: a cluster ingress's workers, which then run every request; this process loads no backbone."""
        # Only the inference thread computes on every core; start-up, loaders and request handlers run their
        # torch ops serially, so OpenMP never manages more threads than there are CPUs (engine/threads.py).
        cores = threads.serial_by_default()
        try:
            return cls._start_ingress(settings, remote) if remote is not None else cls._start(settings, cores)
        except BaseException:
            threads.end_serial_default()
            raise

    @classmethod
    def _start(cls, settings: Settings, cores: int) -> Runtime:
        source = model_source(settings)
        device = resolve_device(settings.device)
        dtype = choose_dtype(settings.dtype, device)
        loaded = Engine.from_pretrained(source.backbone, device=str(device), dtype=dtype, language=source.head_language)
        engine = loaded.engine
        validator = BackboneValidator.for_engine(engine)
        store = open_store(settings, validator)
        if settings.seed_store:
            seed_store(store, loaded.default_original, source)
        loaders = ThreadPoolExecutor(
            # No torch.set_num_threads(1) here: it is process-wide, and would leave inference on one core.
            settings.cache.loader_threads,
            thread_name_prefix="chorus-loader",
        )
        cache = adapter_cache(
            store,
            validator,
            engine,
            settings.cache.device_budget_mb * MiB,
            settings.cache.host_budget_mb * MiB,
            loaders,
        )
        LOADED.budget_bytes = settings.cache.decoder_budget_mb * MiB  # the process's beam-search decoders
        metrics = Metrics(settings.max_adapter_label_values)
        rate = engine.preprocess.sampling_rate
        limits = resolve_batch_limits(settings.batch, engine.device, rate)
        on_gpu = engine.device.type == "cuda"
        warm_up = warm_up_plan(engine, limits, settings.batch) if on_gpu else None
        # A request waits `max_wait` for company only while another request is in flight: a lone request (its
        # own windows already queued) would wait for nobody.
        worker = Worker(
            engine,
            limits,
            metrics,
            warm_up=warm_up,
            prefetch=on_gpu,
            company_expected=lambda: metrics.requests_in_flight() > 1,
            compute_threads=cores,  # a no-op where the per-thread setting is out of reach
        )
        metrics.state.queue_state = lambda: (worker.queued_items, worker.queued_samples / rate)
        metrics.state.cache, metrics.state.device = cache, engine.device
        metrics.state.adapters_info, metrics.state.max_adapters = worker.adapters_info, worker.limits.max_items
        default = settings.default_adapter or f"{SEED_OWNER}/{source.head_id}"
        transcriber = Transcriber(engine, store, cache, worker, settings, default)
        speech.warm_up()
        backbone = BackboneInfo.of(engine, default)
        local = LocalInference(transcriber, metrics)
        runtime = cls._finish(settings, backbone, engine, store, cache, worker, metrics, transcriber, loaders, local)
        worker.start()
        logger.info("batching: %s", worker.limits)
        return runtime

    @classmethod
    def _start_ingress(cls, settings: Settings, remote: Remote) -> Runtime:
        """A cluster ingress: everything but the backbone. Uploads are checked against the workers' description
        of their backbone (fingerprint and shapes), the workers seed the store and run every request."""
        backbone = remote.backbone()
        store = open_store(settings, backbone.validator)
        metrics = Metrics(settings.max_adapter_label_values)
        # Retry-After counts the queued audio at one second per second: the ingress does not see the workers' speed.
        intake = Intake(store, settings, backbone.default_adapter, backbone.sampling_rate, lambda: 1.0)
        return cls._finish(settings, backbone, None, store, NoResidency(), None, metrics, intake, None, remote)

    @classmethod
    def _finish(
        cls,
        settings: Settings,
        backbone: BackboneInfo,
        engine: Engine | None,
        store: AdapterStore,
        cache: Residency,
        worker: Worker | None,
        metrics: Metrics,
        transcriber: Intake,
        loaders: ThreadPoolExecutor | None,
        inference: Inference,
    ) -> Runtime:
        """What every server has besides the backbone: tenants, keys, audit, quotas, the store watcher."""
        tenants = open_tenant_store(settings)
        keys = key_ring(settings, tenants)
        auth = Authenticator(keys, anonymous_role(settings.auth, keys), auto=settings.auth.anonymous == "auto")
        audit = AuditLog(tenants, audit_export(settings))
        quotas = Quotas(settings.limits.tenant, tenants)
        changes = ChangeWatch(tenants, [functools.partial(_keys_appeared, auth), quotas.refresh_limits])
        logger.info(
            "tenant database: %s; API keys %s",
            tenants.describe(),
            "off: keyless (until the first key is created)" if auth.open else "on",
        )
        pinned: dict[str, str] = {}
        watcher = StoreWatcher(store, cache, pinned, settings.cache.watch_seconds)
        watcher.start()
        changes.start()
        return cls(
            settings,
            backbone,
            engine,
            store,
            cache,
            worker,
            metrics,
            auth,
            audit,
            quotas,
            transcriber,
            loaders,
            pinned,
            watcher,
            tenants,
            changes,
            inference,
        )

    def ready(self) -> bool:
        """The inference worker is alive and the device usable (a cluster ingress: see `inference.workers`)."""
        return self.worker is None or self.worker.is_ready()

    def close(self) -> None:
        """Run everything already admitted, then stop the worker and the loaders."""
        self.watcher.stop()
        self.changes.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.loaders is not None:
            self.loaders.shutdown(wait=True, cancel_futures=True)
        if isinstance(self.transcriber, Transcriber):
            self.transcriber.decoders.shutdown()
        self.quotas.close()
        self.auth.close()
        self.tenants.close()
        threads.end_serial_default()  # threads started later may use every core again


def open_store(settings: Settings, validator: BackboneValidator) -> AdapterStore:
    """`CHORUS_STORE`: s3://bucket/prefix (S3Store, needs chorus-asr[s3]) or a local directory (LocalStore)."""
    if settings.store.startswith("s3://"):
        from chorus_store.s3 import S3Store

        return S3Store.from_url(
            settings.store,
            validator,
            settings.limits.max_adapter_bytes,
            scratch=upload_dir(settings),
            decoding_limits=decoding_limits(settings),
            decoding_cache_bytes=settings.cache.decoding_files_mb << 20,
        )
    return LocalStore(Path(settings.store), validator, settings.limits.max_adapter_bytes, decoding_limits(settings))


def decoding_limits(settings: Settings) -> DecodingLimits:
    limits = settings.limits
    return DecodingLimits(
        limits.max_lm_bytes, limits.max_lexicon_bytes, limits.max_lexicon_words, check_binary=check_kenlm_binary
    )


def upload_dir(settings: Settings) -> Path:
    """Where uploads are spooled before they are published: beside a local store, else under DATA_DIR."""
    if settings.store.startswith("s3://"):
        return settings.data_dir / "uploads"
    return Path(settings.store) / "tmp"


def key_ring(settings: Settings, tenants: TenantStore) -> KeyRing:
    """The API keys of this configuration: the tenant store's and the environment's, hashed."""
    return KeyRing(tenants, env_keys(settings.auth))


def _keys_appeared(auth: Authenticator) -> None:
    if auth.keys_appeared():
        logger.warning("API keys: on (a key was created while the server ran keyless); every caller now needs one")


def seed_store(store: AdapterStore, head: Adapter | None, source: ModelSource) -> None:
    """First start only (empty store): publish the backbone's own head and the bundled adapters, public."""
    if store.list_adapters(limit=1).items:
        return
    with tempfile.TemporaryDirectory() as scratch:
        files: list[tuple[str, Path, str | None]] = []  # (name, file, language: None for the file's own)
        if head is not None:
            head_file = Path(scratch) / f"{source.head_id}.safetensors"
            save_adapter(head, head_file)
            files.append((source.head_id, head_file, source.head_language or head.info.language))
        files += [(path.stem.lower(), path, None) for path in source.seed_adapters]
        for adapter_id, path, language in files:
            try:
                record = _seed_one(store, f"{SEED_OWNER}/{adapter_id}", path, source.lm_dir, language)
                logger.info(
                    "seeded the store with adapter %s (%s%s)",
                    record.ref,
                    record.kind,
                    ", with its language model" if record.lm or record.lexicon else "",
                )
            except StoreError as exc:
                logger.warning("could not seed adapter %s from %s: %s", adapter_id, path, exc)


def _seed_one(
    store: AdapterStore, adapter_id: str, path: Path, lm_dir: Path | None, language: str | None
) -> AdapterRecord:
    """Publish one seed adapter with its demo language model; if the store refuses those files, the adapter is
    still seeded, without them (a bad demo LM must not take the adapter away), and the log says why."""
    decoding = seed_decoding(lm_dir, path, language)
    try:
        return store.publish(adapter_id, path, visibility="public", decoding=decoding)
    except AdapterRejected as exc:
        if decoding is None:
            raise
        logger.warning(
            "the demo language model for %s was refused (%s); seeding the adapter without it", adapter_id, exc
        )
        return store.publish(adapter_id, path, visibility="public")


def seed_decoding(lm_dir: Path | None, adapter_file: Path, language: str | None) -> DecodingUpload | None:
    """The demo language model and lexicon for a seeded adapter's language (`lm_dir/<lang>/lm.arpa`,
    `lexicon.txt`), if the model ships them. `language` None: the file's own; classifiers decode no text."""
    if lm_dir is None or not lm_dir.is_dir():
        return None
    if language is None:
        meta, _ = read_adapter_file(adapter_file)
        if meta.get("kind") == CLASSIFIER:
            return None
        language = meta.get("language", "")
    lm, lexicon = lm_dir / language / "lm.arpa", lm_dir / language / "lexicon.txt"
    if not language or not (lm.is_file() or lexicon.is_file()):
        return None
    return DecodingUpload(lm if lm.is_file() else None, lexicon if lexicon.is_file() else None)
