"""Waiting in a bench: poll until something holds, or fail saying what was waited for."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    every: float = 0.2,
    errors: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """predicate's first truthy value, asked every `every` s for up to `timeout` s. An error of
    `errors` counts as not yet (the thing waited for may not answer yet); any other is raised.
    TimeoutError names `what` and the last such error."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except errors as error:
            last = error
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")
