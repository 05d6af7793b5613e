"""The CUDA path on a real GPU (skipped without one): a mixed batch served on `cuda` equals the CPU's, the staged
path with pinned buffers and buckets equals the plain one, a forward synchronises once, and adapter
uploads leave a pinned host copy. Every behaviour here is also tested on the CPU with simulated devices; these
tests check the simulation against the hardware."""

from __future__ import annotations

import warnings

import pytest
import torch

from chorus_server.engine import Engine, load_adapter, pad_batch
from chorus_server.engine.staging import HostBuffers
from chorus_server.engine.upload import AdapterUploader

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def engines(random_model_dir):
    _, path = random_model_dir
    files = sorted((path / "adapters").glob("*.safetensors"))[:3]
    gpu = Engine.from_pretrained(path, device="cuda", dtype="float32").engine
    cpu = Engine.from_pretrained(path, device="cpu", dtype="float32").engine
    torch.backends.cuda.matmul.allow_tf32 = False  # exact comparison with the CPU (the engine turned TF32 on)
    torch.backends.cudnn.allow_tf32 = False
    yield (gpu, [gpu.prepare(load_adapter(f)) for f in files]), (cpu, [cpu.prepare(load_adapter(f)) for f in files])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return pad_batch([torch.randn(n, generator=gen) for n in (8000, 20000, 12000, 300)])


def test_the_device_has_an_index_and_a_mixed_batch_matches_the_cpu(engines):
    (gpu, gpu_adapters), (cpu, cpu_adapters) = engines
    assert gpu.device == torch.device("cuda", torch.cuda.current_device())
    chosen = [0, 1, 0, 2]
    got = gpu.forward(*batch(), [gpu_adapters[i] for i in chosen])
    want = cpu.forward(*batch(), [cpu_adapters[i] for i in chosen])
    for g, w in zip(got, want, strict=True):
        assert g.device.type == "cpu" and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_pinned_staging_and_buckets_change_nothing(engines):
    (gpu, adapters), _ = engines
    waveforms, lengths = batch()
    chosen = [adapters[0], adapters[1], adapters[0], adapters[2]]
    plain = gpu.forward(waveforms, lengths, chosen)
    buffers = HostBuffers(gpu.device)
    staged = gpu.stage(waveforms, lengths, chosen, buffers)
    assert staged.ready is not None and staged.waveforms.shape[1] == 2 * 16000  # 20000 samples -> the 2 s bucket
    for got, want in zip(gpu.run(staged), plain, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_forward_synchronises_exactly_once(engines):
    """The results' copy back is the one sync: frame counts are host arithmetic on the staged lengths (before, the
    backbone read the front end's device tensor of frame counts back with `.tolist()`: a second sync)."""
    (gpu, adapters), _ = engines
    waveforms, lengths = batch()
    staged = gpu.stage(waveforms, lengths, [adapters[i % 3] for i in range(4)], HostBuffers(gpu.device))
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            gpu.run(staged)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # Only the warnings naming a synchronizing operation: torch also warns once that the debug mode is a prototype.
    syncs = [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]
    assert len(syncs) == 1, syncs  # the results reach the host once, and nothing else waits for the device


def test_uploads_keep_a_pinned_host_copy(engines, random_model_dir):
    (gpu, _), _ = engines
    _, path = random_model_dir
    uploader = AdapterUploader(gpu)
    host = uploader.pin(load_adapter(sorted((path / "adapters").glob("*.safetensors"))[0]))
    device = uploader(host)
    # An empty tensor (a head-only adapter's layer weights) owns no memory to pin; every other one is pinned.
    assert all(t.is_pinned() for t in host.parameters() if t.numel())
    assert all(t.device == gpu.device for t in device.parameters())
    torch.testing.assert_close(device.head.weight.cpu(), host.head.weight)


def test_a_mixed_transcription_and_classification_batch_matches_the_cpu(engines):
    """Classifier items ride the staged (pinned, bucketed) GPU batch with CTC items; scores equal the CPU's."""
    from chorus_server.engine.random_model import random_classifier

    (gpu, gpu_adapters), (cpu, cpu_adapters) = engines
    n = cpu.config.num_hidden_layers
    classifier = random_classifier(cpu.config, "lid", ["en", "fr", "de"], 4, list(range(n)), 5, cpu.fingerprint)
    gpu_all, cpu_all = [*gpu_adapters, gpu.prepare(classifier)], [*cpu_adapters, cpu.prepare(classifier)]
    chosen = [3, 0, 1, 3]
    waveforms, lengths = batch()
    got = gpu.run(gpu.stage(waveforms, lengths, [gpu_all[i] for i in chosen], HostBuffers(gpu.device)))
    want = cpu.forward(waveforms, lengths, [cpu_all[i] for i in chosen])
    assert got[0].shape == (3,) and got[3].shape == (0,)  # the 300-sample item is too short for a frame
    for g, w in zip(got, want, strict=True):
        assert g.device.type == "cpu" and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
