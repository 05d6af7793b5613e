"""The blocking side of the client's few I/O primitives; see `_async_io`, its asyncio twin, which the generated sync
client uses under this module's name."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
X = TypeVar("X")

Sleep = Callable[[float], None]
sleep: Sleep = time.sleep


def run_blocking(func: Callable[..., T], *args: Any) -> T:
    return func(*args)


def map_bounded(func: Callable[[X], T], items: Sequence[X], limit: int) -> list[T]:
    """`func` over `items` on at most `limit` threads; results in input order."""
    with ThreadPoolExecutor(max_workers=min(limit, max(1, len(items)))) as pool:
        return list(pool.map(func, items))
