"""Stage the next batch while the device runs this one (GPU servers).

A stager thread collects batch N+1 and prepares it (pad into pinned memory, start the copy to the device) while
the inference thread runs batch N; then it waits until N+1 is taken before collecting N+2, so at most one batch
is staged ahead and batch formation still sees a fresh queue. On a CPU there is nothing to overlap (the host *is*
the device), so the worker does not use this.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

B = TypeVar("B")
S = TypeVar("S")


class Prefetcher(Generic[B, S]):
    """`for batch, staged in Prefetcher(collect, stage):` — `collect()` returns the next batch or None when done;
    `stage(batch)` runs on the stager thread. A staging error is handed over in place of its result."""

    def __init__(self, collect: Callable[[], B | None], stage: Callable[[B], S], name: str = "chorus-stager"):
        self._collect, self._stage = collect, stage
        self._slot: queue.Queue[tuple[B, S | Exception] | None] = queue.Queue(maxsize=1)
        self._taken = threading.Semaphore(1)  # released when the staged batch is taken: stage the next one
        self._thread = threading.Thread(target=self._stage_ahead, name=name, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple[B, S | Exception]]:
        while (entry := self._slot.get()) is not None:
            self._taken.release()
            yield entry
            del entry  # not held while waiting for the next batch: its items view requests' decoded audio

    def _stage_ahead(self) -> None:
        try:
            while True:
                self._taken.acquire()
                batch = self._collect()
                if batch is None:
                    return
                staged: S | Exception
                try:
                    staged = self._stage(batch)
                except Exception as exc:  # the inference thread fails (or retries) the batch
                    staged = exc.with_traceback(None)
                self._slot.put((batch, staged))
                del batch, staged  # this thread waits next with nothing of the batch it handed over
        except Exception:
            logger.exception("batch stager failed")
        finally:
            self._slot.put(None)
