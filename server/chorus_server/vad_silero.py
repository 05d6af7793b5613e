"""Silero VAD v6 (16 kHz) in plain PyTorch, with the weights of the TorchScript model its PyPI wheel ships.

The wheel's own loaders are not used: importing `silero_vad` calls `torch.set_num_threads(1)`, which is
process-wide and would put the inference thread on one core. Only the model file is read (the package is located
without being imported) and its weights are copied into this eager network, which computes what the wheel's
model computes (a test compares them): every 512-sample chunk, with the 64 samples before it as context, goes
through an STFT-like convolution and four convolutions to a 128-dim vector; an LSTM runs over the chunk sequence
and a 1x1 convolution gives the speech probability. Only the LSTM is sequential, so the convolutions run on all
chunks of a file at once, and one `nn.LSTM` call replaces the wheel's chunk-by-chunk loop.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
CHUNK = 512  # samples per probability (32 ms)
CONTEXT = 64  # samples of the previous chunk each chunk sees
WEIGHTS = "silero_vad.jit"
# Our parameter -> the wheel's (its 16 kHz model; the file also holds an 8 kHz one). Its LSTMCell has the gates
# of nn.LSTM in the same order (i, f, g, o).
KEYS = {
    "stft_conv.weight": "_model.stft.forward_basis_buffer",
    **{
        f"conv{i + 1}.{kind}": f"_model.encoder.{i}.reparam_conv.{kind}"
        for i in range(4)
        for kind in ("weight", "bias")
    },
    **{f"lstm.{kind}_l0": f"_model.decoder.rnn.{kind}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    "final_conv.weight": "_model.decoder.decoder.2.weight",
    "final_conv.bias": "_model.decoder.decoder.2.bias",
}


def weights_path() -> Path:
    """The weights inside the installed `silero-vad` wheel (located, not imported). Raises ImportError if absent."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("silero-vad is not installed (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / WEIGHTS
    if not path.is_file():
        raise ImportError(f"silero-vad is installed but lacks {WEIGHTS}: {path}")
    return path


class SileroVad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm = nn.LSTM(128, 128, batch_first=True)
        self.final_conv = nn.Conv1d(128, 1, 1)

    @classmethod
    def from_wheel(cls, path: Path | None = None) -> SileroVad:
        """The 16 kHz weights of the wheel's TorchScript model (its `silero_vad.jit`; loading it runs nothing)."""
        with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; only the weights are taken from it
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(path or weights_path()), map_location="cpu")
        state = scripted.state_dict()
        model = cls()
        model.load_state_dict({ours: state[theirs] for ours, theirs in KEYS.items()}, strict=True)
        return model.eval()

    @torch.inference_mode()
    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        """samples: (L,) float32 mono 16 kHz -> (ceil(L / 512),) speech probabilities, one per 32 ms chunk."""
        if samples.dim() != 1:
            raise ValueError(f"expected mono (L,) audio, got shape {tuple(samples.shape)}")
        count = -(-samples.shape[0] // CHUNK)
        if count == 0:
            return torch.zeros(0)
        padded = F.pad(samples.float(), (CONTEXT, count * CHUNK - samples.shape[0]))  # (CONTEXT + count * CHUNK,)
        chunks = padded.unfold(0, CHUNK + CONTEXT, CHUNK)  # (N, 576): each chunk with its context
        x = F.pad(chunks, (0, CONTEXT), mode="reflect").unsqueeze(1)  # (N, 1, 640)
        x = self.stft_conv(x)  # (N, 258, 4)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()  # (N, 129, 4) magnitudes
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x)).squeeze(-1)  # (N, 128)
        h, _ = self.lstm(x.unsqueeze(0))  # (1, N, 128)
        out = self.final_conv(F.relu(h[0]).unsqueeze(-1))  # (N, 1, 1)
        return torch.sigmoid(out).reshape(count)
