"""`chorus train-adapter` end to end on a tiny random backbone and a tiny manifest (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
import torch

from chorus_server.cli import main
from chorus_server.engine import Engine, load_adapter
from chorus_server.engine.adapters import Adapter, AdapterInfo
from chorus_server.engine.random_model import write_random_model
from chorus_training.manifest import build_vocab
from chorus_training.model import CTCModel

TEXTS = ["ab ba", "abc", "ca ab", "é a"]


def write_manifest(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(TEXTS):
        audio = 0.1 * rng.standard_normal(4000 + 800 * i).astype(np.float32)
        soundfile.write(folder / f"u{i}.wav", audio, 16_000)
        lines.append(json.dumps({"audio": f"u{i}.wav", "text": text, "lang": "xx"}))
    (folder / "m.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "m.jsonl"


def test_train_adapter_writes_an_adapter_the_engine_accepts(tmp_path: Path, capsys) -> None:
    write_random_model(tmp_path / "bb", "tiny", 0)
    manifest = write_manifest(tmp_path)
    out = tmp_path / "xx.safetensors"
    args = [
        "train-adapter",
        "--backbone",
        str(tmp_path / "bb"),
        "--train",
        str(manifest),
        "--valid",
        str(manifest),
        "--test",
        str(manifest),
        "--lang",
        "xx",
        "--out",
        str(out),
        "--steps",
        "3",
        "--eval-every",
        "2",
        "--bottleneck-dim",
        "4",
        "--top-k",
        "1",
        "--batch-seconds",
        "1",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_cer"] >= 0 and summary["trainable_parameters"] > 0
    lexicon = tmp_path / "xx.lexicon.txt"  # the transcripts' words, for `chorus adapters upload --lexicon`
    assert summary["lexicon"] == str(lexicon) and summary["lexicon_words"] == 6
    assert lexicon.read_text(encoding="utf-8") == "a\nab\nabc\nba\nca\né\n"

    loaded = Engine.from_pretrained(tmp_path / "bb", device="cpu")
    adapter = loaded.engine.prepare(load_adapter(out))  # checks hidden size, layers and fingerprint
    assert adapter.info.kind == "houlsby" and adapter.info.language == "xx"
    assert adapter.layer_ids == (1,)
    assert set("abcé") <= set(adapter.vocab.tokens)
    texts = loaded.engine.transcribe([np.zeros(8000, np.float32)], [adapter])
    assert isinstance(texts[0].text, str)


def test_training_forward_matches_the_engine(tmp_path: Path) -> None:
    """The training model's eval forward is the engine's computation (adapter applied, padding explicit)."""
    write_random_model(tmp_path / "bb", "tiny", 0)
    engine = Engine.from_pretrained(tmp_path / "bb", device="cpu").engine
    info = AdapterInfo("xx", "houlsby", backbone_fingerprint=engine.fingerprint)
    adapter = Adapter(info, build_vocab(TEXTS), engine.config.hidden_size, 4, [0, 1])
    adapter.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".up." in name:
                p.normal_(0, 0.1)  # not the identity, so a skipped bottleneck would show
    adapter = engine.prepare(adapter)
    model = CTCModel(engine.backbone, adapter.head, adapter).eval()
    waveforms = torch.randn(2, 6000)
    lengths = torch.tensor([6000, 4200])
    waveforms[1, 4200:] = 0
    expected = engine.forward(waveforms, lengths, [adapter, adapter])
    with torch.no_grad():
        logits, frames = model(waveforms, lengths)
    for row in range(2):
        torch.testing.assert_close(logits[row, : int(frames[row])], expected[row], atol=1e-5, rtol=1e-5)


def test_full_finetune_writes_a_model_directory(tmp_path: Path, capsys) -> None:
    write_random_model(tmp_path / "bb", "tiny", 0)
    manifest = write_manifest(tmp_path)
    out = tmp_path / "ft"
    args = [
        "train-adapter",
        "--backbone",
        str(tmp_path / "bb"),
        "--train",
        str(manifest),
        "--valid",
        str(manifest),
        "--test",
        str(manifest),
        "--lang",
        "xx",
        "--out",
        str(out),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--full-finetune",
        "--batch-seconds",
        "1",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["trainable_percent_of_backbone"] > 50
    loaded = Engine.from_pretrained(out, device="cpu")
    assert loaded.default_adapter is not None and set("abcé") <= set(loaded.default_adapter.vocab.tokens)


def test_the_lexicon_is_what_the_store_accepts_for_the_adapter(tmp_path: Path) -> None:
    """Words the adapter cannot spell (a character missing from its vocabulary) stay out of the lexicon, so the
    store's check of an upload passes."""
    from chorus_server.decoding.request import spelling_symbols
    from chorus_store.decoding_files import LexiconCheck
    from chorus_training.lexicon import write_lexicon

    manifest = write_manifest(tmp_path)
    vocab = build_vocab(["ab ba abc"])  # a, b and c: "é" is not in it
    out = tmp_path / "lex.txt"
    assert write_lexicon(manifest, vocab, out) == 5
    check = LexiconCheck(spelling_symbols(vocab), 100)
    check.feed(out.read_bytes())
    assert check.finish() == 5 and "é" not in out.read_text(encoding="utf-8")
