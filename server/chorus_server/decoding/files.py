"""An adapter version's decoding files, brought beside the adapter when the cache loads it: `LanguageModelFiles`
with local paths (the store's file in place, or its verified cache copy of a remote one, fetched again if that
copy has been evicted by the time a decoder is built) and the version's beam settings."""

from __future__ import annotations

from chorus_server.decoding.beam_overrides import beam_settings
from chorus_server.decoding.options import LanguageModelFiles
from chorus_store.base import AdapterRecord, AdapterStore


def language_model_files(store: AdapterStore, record: AdapterRecord) -> LanguageModelFiles | None:
    """None for a version stored without a language model or lexicon. Runs on a loader thread (it may download)."""
    if record.lm is None and record.lexicon is None:
        return None
    return _fetched(store, record)


def _fetched(store: AdapterStore, record: AdapterRecord) -> LanguageModelFiles:
    return LanguageModelFiles(
        lm=store.decoding_file(record, "lm") if record.lm is not None else None,
        lexicon=store.decoding_file(record, "lexicon") if record.lexicon is not None else None,
        settings=beam_settings(record.beam),
        fetch_again=lambda: _fetched(store, record),
    )
