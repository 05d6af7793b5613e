"""Chorus: a multi-tenant speech-recognition server (one wav2vec 2.0 backbone, many adapters)."""

__version__ = "0.1.0"
