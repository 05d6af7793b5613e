"""A pinned adapter version's beam-search decoder is built when the pin takes effect, not at its first request.

Building a decoder (KenLM model + lexicon trie) takes 0.3-2 s for the demo's word lists, and the first request
that decodes with it waits for that. Pinning says "keep this version ready": once a pin has made the version
resident (`POST /v1/adapters/{id}/pin`, or the store's pins applied by `store_watch.py` at start and on change),
its decoder is built on a background thread, one build at a time, in the same cache requests use
(`resources.LOADED`, within its memory budget).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from chorus_server.decoding import resources

logger = logging.getLogger(__name__)

_BUILDER = ThreadPoolExecutor(1, thread_name_prefix="chorus-prewarm")


def prewarm(cache: Any, ref: str) -> Future[bool] | None:
    """Build `ref`'s decoder in the background where its version decodes by beam search by default (None where
    `cache` holds no adapters here, as on a cluster ingress). The future says whether a decoder was built."""
    if not hasattr(cache, "acquire"):
        return None
    return _BUILDER.submit(_build, cache, ref)


def _build(cache: Any, ref: str) -> bool:
    try:
        with cache.acquire(ref, timeout=60) as adapter:
            files, vocab = getattr(adapter, "language_model", None), adapter.vocab
        if files is None or files.default_decoder != "beam":
            return False
        resources.LOADED.get(files, vocab)
        return True
    except resources.DecoderUnavailable as why:  # no flashlight-text here, or over the memory budget
        logger.info("pinned %s decodes without a prebuilt beam-search decoder: %s", ref, why)
        return False
    except Exception:  # the first request builds it (or says why it cannot); a prewarm never fails a pin
        logger.warning("could not build the beam-search decoder of pinned %s ahead of requests", ref, exc_info=True)
        return False
