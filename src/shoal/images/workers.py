"""Running transfer tasks on a thread pool: all of them, or up to the first failure."""

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait


class Cancelled(Exception):
    """A task stopped because another one failed."""


def run_all(tasks: Sequence[Callable[[], None]], parallel: int, stop: threading.Event) -> None:
    """Run tasks on up to `parallel` threads. On the first failure, set `stop` (tasks poll it
    between reads and raise Cancelled), wait for the running ones, and raise that failure."""
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    if not tasks:
        return

    def guarded(task: Callable[[], None]) -> None:
        if stop.is_set():
            raise Cancelled()
        task()

    with ThreadPoolExecutor(min(parallel, len(tasks)), thread_name_prefix="shoal-image") as pool:
        futures = [pool.submit(guarded, task) for task in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if not failed:
            return
        stop.set()
        for future in futures:
            future.cancel()
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
    first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
    raise first  # type: ignore[misc]
