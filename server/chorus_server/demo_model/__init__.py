"""The bundled demo model: a small wav2vec 2.0 backbone trained from scratch on synthetic English speech, plus
fr/de/es/it adapters trained on it. Data files only; see MODEL_CARD.md and `chorus_training.demo`."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
