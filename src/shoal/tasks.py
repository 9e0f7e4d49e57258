"""Running coroutines side by side until the first of them ends."""

import asyncio
from collections.abc import Iterable
from typing import Any


async def first_of(tasks: Iterable[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Wait until one of tasks ends, then cancel the others and wait for them to go (also when
    the caller is cancelled, so none outlives it). Returns the tasks that ended on their own."""
    running = set(tasks)
    try:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    return done
