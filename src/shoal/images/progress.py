"""Progress of a transfer: a thread-safe byte counter that reports (done, total) to a callback."""

import threading
from collections.abc import Callable

ProgressFn = Callable[[int, int], None]


class Progress:
    """Counts bytes from many worker threads; the callback sees done grow (or shrink, when a
    transfer restarts from scratch) and never runs concurrently with itself."""

    def __init__(self, total: int, callback: ProgressFn | None = None, done: int = 0) -> None:
        self.total = total
        self.done = done
        self._callback = callback
        self._lock = threading.Lock()
        if callback is not None:
            callback(done, total)

    def advance(self, count: int) -> None:
        if not count:
            return
        with self._lock:
            self.done += count
            if self._callback is not None:
                self._callback(self.done, self.total)
