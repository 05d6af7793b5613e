"""The engine: one frozen backbone, many adapters, one backbone pass per mixed-adapter batch.

`Engine.forward` sorts the batch by adapter, computes the segments once, runs the backbone once (adapters are
applied per segment inside every layer), applies each segment's CTC head (or, for a classifier, its layer mix,
pooling and head: classify.py) and returns per-item logits in the caller's order. The engine knows nothing about
HTTP, queues or stores. See docs/engine.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chorus_server.engine.adapter_format import adapter_from_hf, check_fit, load_mms_adapter, mms_vocab
from chorus_server.engine.adapters import Adapter
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.checkpoint import fingerprint, load_backbone
from chorus_server.engine.classify import LayerMix, classify
from chorus_server.engine.config import BackboneConfig, PreprocessConfig
from chorus_server.engine.decode import Transcript, ctc_greedy_decode
from chorus_server.engine.device import (
    DTYPES,
    configure_matmul,
    resolve_device,
    resolve_dtype,
    same_device,
    to_device,
    use_device,
)
from chorus_server.engine.errors import AdapterError, CheckpointError, InputError
from chorus_server.engine.frontend import time_mask
from chorus_server.engine.routing import Router, Routing, one_pass_problem
from chorus_server.engine.staging import HostBuffers, StagedBatch, stage_batch

logger = logging.getLogger(__name__)

__all__ = ["DTYPES", "Engine", "LoadedModel", "pad_batch", "resolve_device", "resolve_dtype"]


def normalize(waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance per item over its real samples (as HF's feature extractor); padding stays 0.

    On the CPU each item's statistics are reduced over its own samples only, so not even their last bit depends
    on the padded length (a reduction over a longer row may split differently across threads); on a GPU one
    masked reduction over the batch. waveforms: (B, L) float32; lengths: (B,) on the waveforms' device.
    """
    if waveforms.device.type != "cpu":
        mask = time_mask(lengths, waveforms.shape[1]).float()
        count = lengths.clamp(min=1).float()[:, None]
        mean = (waveforms * mask).sum(dim=1, keepdim=True) / count
        var = ((waveforms - mean) * mask).square().sum(dim=1, keepdim=True) / count
        return (waveforms - mean) / torch.sqrt(var + 1e-7) * mask
    out = torch.zeros_like(waveforms)
    for i, n in enumerate(lengths.tolist()):
        if n:
            x = waveforms[i, :n]
            mean = x.mean()
            out[i, :n] = (x - mean) / torch.sqrt((x - mean).square().mean() + 1e-7)
    return out


def default_language(vocab_json: dict) -> str:
    """The head's language when none is given: "" for a flat vocab.json; for MMS' nested one, "eng" if present,
    else its first language."""
    if not all(isinstance(v, dict) for v in vocab_json.values()):
        return ""
    return "eng" if "eng" in vocab_json else next(iter(vocab_json))


@dataclass
class LoadedModel:
    """What a checkpoint directory provides: the engine and, when the checkpoint has an lm_head, its adapter
    (prepared for the engine) and that adapter as the checkpoint stores it (float32 on the host: what gets
    published, so a bf16 server never publishes a head rounded to bf16)."""

    engine: Engine
    default_adapter: Adapter | None
    default_original: Adapter | None = None


class Engine:
    def __init__(
        self,
        backbone: Backbone,
        preprocess: PreprocessConfig,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        backbone_fingerprint: str | None = None,
    ):
        self.config: BackboneConfig = backbone.config
        self.preprocess = preprocess
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        configure_matmul(self.device)
        use_device(self.device)  # the building thread's lazy CUDA set-up happens on this GPU, not on GPU 0
        self.fingerprint = backbone_fingerprint or fingerprint(backbone)
        self.backbone = backbone.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.frame_seconds = self.config.inputs_to_logits_ratio / preprocess.sampling_rate

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], device: str = "auto", dtype: str = "float32", language: str | None = None
    ) -> LoadedModel:
        """Load an HF wav2vec 2.0 directory; an `lm_head` (+ MMS adapter layers) becomes the default adapter."""
        path = Path(path)
        config = BackboneConfig.from_dir(path)
        backbone, head, adapter_layers = load_backbone(path, config)
        engine = cls(backbone, PreprocessConfig.from_dir(path), device, dtype, fingerprint(backbone))
        default = built = None
        if head:
            vocab_file = path / "vocab.json"
            if not vocab_file.is_file():
                raise CheckpointError(f"{path} has an lm_head but no vocab.json")
            vocab_json = json.loads(vocab_file.read_text())
            lang = language or default_language(vocab_json)
            vocab = mms_vocab(vocab_json, lang)
            name = lang or path.name
            built = adapter_from_hf(name, lang, vocab, head, adapter_layers, config.hidden_size, engine.fingerprint)
            default = engine.prepare(built)
        logger.info(
            "loaded backbone %s (%s, %d layers, hidden %d) on %s/%s, fingerprint %s",
            path,
            "pre-LN" if config.do_stable_layer_norm else "post-LN",
            config.num_hidden_layers,
            config.hidden_size,
            engine.device,
            str(engine.dtype).removeprefix("torch."),
            engine.fingerprint,
        )
        return LoadedModel(engine, default, built)

    def load_mms_adapter(self, path: str | os.PathLike[str], vocab_json: dict, language: str) -> Adapter:
        """An MMS `adapter.<lang>.safetensors` beside this backbone (MMS files carry no fingerprint: trusted)."""
        return self.prepare(load_mms_adapter(path, vocab_json, language, self.config.hidden_size, self.fingerprint))

    def prepare(self, adapter: Adapter, check_fingerprint: bool = True, non_blocking: bool = False) -> Adapter:
        """Check an adapter fits this backbone, then move it to the engine's device and dtype (`non_blocking`:
        from pinned memory, on the caller's stream; see upload.py)."""
        check_fit(
            adapter,
            self.config.hidden_size,
            self.config.num_hidden_layers,
            self.fingerprint if check_fingerprint else None,
            tuple(self.config.conv_dim),
        )
        return adapter.converted(self.device, self.dtype, non_blocking).eval().requires_grad_(False)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.backbone.frame_lengths(lengths)

    @torch.inference_mode()
    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, adapters: Sequence[Adapter | Routing]
    ) -> list[torch.Tensor]:
        """One backbone pass over a mixed-adapter batch: `run(stage(...))`.

        waveforms: (B, L) float32 at the backbone's sampling rate, zero-padded; lengths: (B,) int samples;
        adapters: B adapters (prepared by this engine). Returns B float32 logits tensors on the host: (T_i, V_i) per
        frame for a CTC adapter, (labels_i,) for the whole item for a classifier (softmax gives its scores).
        Items too short for one frame (< receptive field, 400 samples) get (0, V_i) logits, or (0,) for a
        classifier (nothing to classify). An item given as a `Routing` (routing.py) gets the logits of the adapter its
        detector picks inside this pass (the decision is recorded in the `Routing`).
        """
        return self.run(self.stage(waveforms, lengths, adapters))

    def stage(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        adapters: Sequence[Adapter | Routing],
        buffers: HostBuffers | None = None,
    ) -> StagedBatch:
        """The host half of `forward` (any thread): check, sort by adapter, pad, start the copy to the device.

        waveforms: (B, L) float32 and lengths: (B,) on the host. `buffers`: reusable pinned memory (CUDA)."""
        use_device(self.device)  # the stager thread pins and copies for this GPU
        waveforms, lengths = waveforms.cpu(), lengths.cpu()
        self._check_batch(waveforms, lengths, adapters)
        return stage_batch(
            waveforms,
            lengths,
            adapters,
            self.frame_lengths,
            self.device,
            self.preprocess.sampling_rate,
            buffers,
        )

    @torch.inference_mode()
    def run(self, staged: StagedBatch) -> list[torch.Tensor]:
        """The device half of `forward` (the inference thread): every head is launched, then one copy back and
        one sync. Frame counts come from the host (`staged.frames`), never from a device tensor."""
        use_device(self.device)  # whichever thread runs the batch (the inference thread, a warm-up, a benchmark)
        classifiers = staged.classifiers or [False] * staged.size
        results: list[torch.Tensor] = [
            torch.zeros(0, dtype=torch.float32) if c else torch.zeros(0, v, dtype=torch.float32)
            for v, c in zip(staged.vocab_sizes, classifiers, strict=True)
        ]
        if not staged.order:
            return results
        batch = staged.waveforms  # (b, W) float32, on the device
        if staged.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(staged.ready)
            batch.record_stream(stream)  # allocated on the copy stream, read on this one
        batch_lengths = to_device(staged.lengths, self.device)
        if self.preprocess.do_normalize:
            batch = normalize(batch, batch_lengths)
        mix = LayerMix(staged.segments)
        router = Router(staged.segments, mix, staged.frames)
        hook = router if mix else None  # the encoder reports its hidden states only when a classifier reads them
        hidden, _ = self.backbone(batch.to(self.dtype), staged.lengths, staged.segments, states_hook=hook)  # (b, T, H)
        segments = router.segments  # routed items: the chosen adapter's segments now
        logits = [
            torch.zeros(seg.stop - seg.start, 0, 0)  # routed to a label without a candidate: no transcription
            if seg.routing is not None and seg.adapter is seg.routing.detector
            else classify(mix.mixed(seg), staged.frames[seg.start : seg.stop], seg.adapter.head, seg.adapter.pool)
            if seg.adapter.is_classifier
            else seg.adapter.head(hidden[seg.start : seg.stop]).float()  # (n, T, V)
            for seg in segments
        ]
        host = [part.to("cpu", non_blocking=True) for part in logits]
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        for seg, part in zip(segments, host, strict=True):
            for row in range(seg.start, seg.stop):
                item = part[row - seg.start]  # (T, V) or a classifier's (labels,)
                is_scores = seg.adapter.is_classifier and seg.routing is None
                results[staged.order[row]] = item if is_scores else item[: staged.frames[row]]
        return results

    def _check_batch(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, adapters: Sequence[Adapter | Routing]
    ) -> None:
        if waveforms.dim() != 2:
            raise InputError(f"expected mono (B, L) audio, got shape {tuple(waveforms.shape)}")
        if lengths.shape != (waveforms.shape[0],):
            raise InputError(f"expected lengths of shape ({waveforms.shape[0]},), got {tuple(lengths.shape)}")
        if len(adapters) != waveforms.shape[0]:
            raise InputError(f"got {len(adapters)} adapters for a batch of {waveforms.shape[0]}")
        if waveforms.shape[0] and (int(lengths.min()) < 0 or int(lengths.max()) > waveforms.shape[1]):
            raise InputError(f"lengths must lie in [0, {waveforms.shape[1]}], got {lengths.tolist()}")
        if not bool(torch.isfinite(waveforms).all()):
            raise InputError("audio contains NaN or Inf samples")
        routings = [a for a in adapters if isinstance(a, Routing)]
        if len({id(r) for r in routings}) != len(routings):
            raise InputError("a Routing records one item's decision: make one per routed item")
        for routing in routings:
            problem = one_pass_problem(routing.detector, routing.candidates, self.config.num_hidden_layers)
            if problem is not None:
                raise AdapterError(f"cannot route in one pass: {problem}")
        for adapter in [a for item in adapters for a in _adapters_of(item)]:
            weight = adapter.head.weight
            if not same_device(weight.device, self.device) or weight.dtype != self.dtype:
                raise AdapterError(f"adapter {adapter.name!r} is not prepared for this engine; call engine.prepare()")

    def transcribe(self, audios: Sequence[np.ndarray | torch.Tensor], adapters: Sequence[Adapter]) -> list[Transcript]:
        """Convenience: pad 1-D float32 arrays, run one forward, greedy-decode each item with its vocabulary."""
        waveforms, lengths = pad_batch(audios)
        logits = self.forward(waveforms, lengths, adapters)
        return [ctc_greedy_decode(lg, a.vocab, self.frame_seconds) for lg, a in zip(logits, adapters, strict=True)]


def _adapters_of(item: Adapter | Routing) -> list[Adapter]:
    return [item.detector, *item.candidates.values()] if isinstance(item, Routing) else [item]


def pad_batch(audios: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of 1-D float arrays -> zero-padded (B, L) float32 tensor and (B,) int64 lengths."""
    tensors = [torch.as_tensor(a, dtype=torch.float32) for a in audios]
    for i, t in enumerate(tensors):
        if t.dim() != 1:
            raise InputError(f"item {i}: expected mono 1-D audio, got shape {tuple(t.shape)}")
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    waveforms = torch.zeros(len(tensors), int(lengths.max()) if tensors else 0)
    for i, t in enumerate(tensors):
        waveforms[i, : t.numel()] = t
    return waveforms, lengths
