"""One-pass routing (routing.py): a detector reading the lower layers picks each routed item's adapter inside the
backbone pass. Every routed item's logits equal a solo pass with the adapter its detector picks solo, bit for bit,
in mixed batches on both backbone variants; placements that would change the states the detector reads are refused."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from chorus_server.engine import AdapterError, Engine, InputError, pad_batch
from chorus_server.engine.engine import normalize
from chorus_server.engine.random_model import random_adapter, random_classifier
from chorus_server.engine.routing import Routing, one_pass_problem
from chorus_server.runtime import choose_dtype
from tests.server.engine.passes import forward_counting_passes

DEFAULT_DTYPE = choose_dtype("auto", torch.device("cpu"))
LABELS = ["de", "en", "fr"]


@pytest.fixture(scope="module")
def setup(random_model_dir):
    """(engine, detector reading states 0..1, candidates per label: top-K bottlenecks from layer 1 up, a head)."""
    _, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu", dtype=DEFAULT_DTYPE).engine
    config, fp = engine.config, engine.fingerprint
    n = config.num_hidden_layers
    detector = random_classifier(config, "lid", LABELS, 0, [], 7, fp, pooling="attentive", num_states=2)
    # A head that tells clips apart (a random one gives every clip the same label): the clips' pooled vectors
    # projected on their two main directions, each label a third of that plane.
    gen, rng = torch.Generator().manual_seed(11), random.Random(11)
    pooled = torch.stack([_pooled(engine, detector, _clip(rng, gen)) for _ in range(12)])  # (12, H)
    mean = pooled.mean(dim=0)
    directions = torch.linalg.svd(pooled - mean, full_matrices=False).Vh[:2]  # (2, H)
    angles = torch.arange(3) * 2 * torch.pi / 3
    rows = torch.stack([angles.cos(), angles.sin()], dim=1) @ directions * 100  # (3, H)
    with torch.no_grad():
        detector.head.weight.copy_(rows)
        detector.head.bias.copy_(-(rows @ mean))
    candidates = {
        "de": random_adapter(config, "houlsby", "de", 8, list(range(1, n)), 12, 21, fp),
        "en": random_adapter(config, "houlsby", "en", 4, [n - 1], 14, 22, fp),
        "fr": random_adapter(config, "head", "fr", 0, [], 10, 23, fp),
    }
    prepared = {label: engine.prepare(a) for label, a in candidates.items()}
    return engine, engine.prepare(detector), prepared


def _noise(samples: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """White noise smoothed by a moving average `width` samples wide."""
    noise = torch.randn(samples, generator=gen)
    return F.avg_pool1d(noise[None, None], width, 1, width // 2)[0, 0, :samples]


def _clip(rng: random.Random, gen: torch.Generator) -> torch.Tensor:
    """0.3-4 s of noise smoothed to a random degree (so that the detector's answers differ)."""
    return _noise(int(rng.uniform(0.3, 4.0) * 16000), rng.choice([1, 3, 9, 27]), gen)


def _pooled(engine: Engine, detector, audio: torch.Tensor) -> torch.Tensor:
    """The detector's pooled vector (H,), computed from the plain backbone's first two hidden states."""
    waveforms, lengths = pad_batch([audio])
    states: list[torch.Tensor] = []
    with torch.inference_mode():
        batch = normalize(waveforms, lengths).to(engine.dtype)
        engine.backbone(batch, lengths, [], states_hook=lambda k, h: states.append(h.float().clone()))
    weights = F.softmax(detector.layer_weights.float(), dim=0)
    mixed = weights[0] * states[0][0] + weights[1] * states[1][0]  # (T, H): states 0 and 1 only
    attention = torch.softmax(mixed @ detector.pool.float(), dim=0)  # (T,)
    return attention @ mixed


def _solo(engine, audio, adapter):
    return engine.forward(*pad_batch([audio]), [adapter])[0]


def test_a_classifier_reading_the_lower_states_mixes_exactly_those(setup):
    """Reference: the first two hidden states of the plain backbone, mixed, attentive pooling, head."""
    engine, detector, _ = setup
    audio = torch.randn(16000, generator=torch.Generator().manual_seed(3))
    expected = detector.head(_pooled(engine, detector, audio)[None].to(engine.dtype)).float()[0]
    torch.testing.assert_close(_solo(engine, audio, detector), expected, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("seed", [1, 2])
def test_routed_items_equal_solo_passes_with_the_adapter_their_detector_picks(setup, seed):
    engine, detector, candidates = setup
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    # Routed clips whose solo answers cover every label the detector gives: a batch of different decisions.
    pool = [_clip(rng, gen) for _ in range(24)]
    by_label: dict[str, list[torch.Tensor]] = {}
    for clip in pool:
        by_label.setdefault(LABELS[int(_solo(engine, clip, detector).argmax())], []).append(clip)
    assert len(by_label) >= 2, by_label.keys()
    routed_audio = [clips[k] for k in range(3) for clips in by_label.values() if k < len(clips)][:8]
    plain_audio = [torch.randn(int(rng.uniform(0.3, 4.0) * 16000), generator=gen) for _ in range(4)]
    plain = [detector, candidates["de"], candidates["en"], detector]  # the detector also as a plain classifier
    routings = [Routing(detector, candidates) for _ in routed_audio]
    items = [*routings, *plain]
    order = list(range(len(items)))
    rng.shuffle(order)
    audios = [(routed_audio + plain_audio)[i] for i in order]
    out, passes = forward_counting_passes(engine, audios, [items[i] for i in order])
    assert passes == 1
    results = dict(zip(order, out, strict=True))
    for k, (audio, routing) in enumerate(zip(routed_audio, routings, strict=True)):
        scores = _solo(engine, audio, detector)
        assert torch.equal(routing.scores, scores)
        assert routing.label == LABELS[int(scores.argmax())]
        expected = _solo(engine, audio, candidates[routing.label])
        assert torch.equal(results[k], expected), (routing.label, (results[k] - expected).abs().max())
    for k, (audio, adapter) in enumerate(zip(plain_audio, plain, strict=True)):
        assert torch.equal(results[len(routings) + k], _solo(engine, audio, adapter))
    assert len({r.label for r in routings}) >= 2  # different decisions in one pass: routing is per item


def test_a_label_without_a_candidate_ends_the_item_untranscribed(setup):
    engine, detector, candidates = setup
    audio = torch.randn(24000, generator=torch.Generator().manual_seed(5))
    label = LABELS[int(_solo(engine, audio, detector).argmax())]
    routing = Routing(detector, {k: v for k, v in candidates.items() if k != label})
    out = engine.forward(*pad_batch([audio]), [routing])[0]
    assert routing.label == label and out.numel() == 0


def test_an_item_too_short_for_a_frame_is_never_decided(setup):
    engine, detector, candidates = setup
    routing = Routing(detector, candidates)
    out = engine.forward(*pad_batch([torch.zeros(300), torch.randn(8000)]), [routing, candidates["en"]])
    assert routing.label is None and out[0].numel() == 0 and out[1].shape[0] > 0


def test_one_routing_per_item(setup):
    engine, detector, candidates = setup
    routing = Routing(detector, candidates)
    with pytest.raises(InputError, match="one per routed item"):
        engine.forward(*pad_batch([torch.randn(8000), torch.randn(8000)]), [routing, routing])


def test_placements_that_would_change_what_the_detector_reads_are_refused(setup, random_model_dir):
    engine, detector, candidates = setup
    config, fp = engine.config, engine.fingerprint
    n = config.num_hidden_layers
    assert one_pass_problem(detector, candidates, n) is None
    low = engine.prepare(random_adapter(config, "houlsby", "low", 4, [0], 8, 30, fp))
    assert "changes layer 0" in (one_pass_problem(detector, {**candidates, "en": low}, n) or "")
    with pytest.raises(AdapterError, match="cannot route in one pass"):
        engine.forward(*pad_batch([torch.randn(8000)]), [Routing(detector, {"en": low})])
    every_state = engine.prepare(random_classifier(config, "all", LABELS, 0, [], 9, fp))  # reads the top layer too
    assert "below the detector's last state" in (one_pass_problem(every_state, candidates, n) or "")
    adapted = engine.prepare(random_classifier(config, "ad", LABELS, 4, [0], 9, fp, num_states=2))
    assert "adapters of its own" in (one_pass_problem(adapted, candidates, n) or "")
    chapter = engine.prepare(random_classifier(config, "cnn", LABELS, 0, [], 9, fp, 4, [0], num_states=2))
    assert "adapters of its own" in (one_pass_problem(chapter, candidates, n) or "")
    assert "not a classifier" in (one_pass_problem(candidates["en"], candidates, n) or "")
    assert "is a classifier" in (one_pass_problem(detector, {"en": detector}, n) or "")
