"""The controller's event loop.

uvloop when it is installed (it comes with uvicorn's standard extras): its TLS and socket paths
are compiled, where asyncio's run in Python on the event loop's thread, which serves every
request. SHOAL_EVENT_LOOP=asyncio picks the standard loop (for debugging, or a platform uvloop
does not build on).

Agents and `shoal dev` keep asyncio's own loop: their backends supervise child processes (QEMU
daemonizes; tart runs in the foreground), and uvloop's subprocess transport waits on a
daemonizing child's pipes where asyncio's does not.
"""

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("SHOAL_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
