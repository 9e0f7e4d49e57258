"""Child processes of the agent, ended safely."""

import asyncio
import contextlib
import os
import signal


def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL a child that asyncio watches, if it has not been reaped yet.

    Not process.kill(): that goes through Popen.send_signal, which polls first and may reap a
    child that has just exited before asyncio's watcher does; the watcher then reports exit
    code 255 instead of the real one. A signal sent straight to a pid not yet reaped can only
    reach that child (a zombie's pid is not reused)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
