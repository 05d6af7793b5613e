"""The asyncio side of the client's few I/O primitives. `_sync_io` is its blocking twin: the sync client is generated
from the async one (tools/unasync_client.py), which renames `_async_io` to `_sync_io` and drops async/await."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
X = TypeVar("X")

Sleep = Callable[[float], Awaitable[None]]
sleep: Sleep = asyncio.sleep


async def run_blocking(func: Callable[..., T], *args: Any) -> T:
    """Blocking file work (reading audio or an upload) off the event loop."""
    return await asyncio.to_thread(func, *args)


async def map_bounded(func: Callable[[X], Awaitable[T]], items: Sequence[X], limit: int) -> list[T]:
    """`func` over `items` with at most `limit` in flight; results in input order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(item: X) -> T:
        async with semaphore:
            return await func(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
