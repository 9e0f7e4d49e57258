"""The client's end of exec: run a command in a VM's guest, feed it stdin, and hand its stdout
and stderr over as they arrive (`shoal exec`, `shoal run`, the GitLab executor)."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed

from shoal.errors import Unavailable
from shoal.tunnel import execframes as frames
from shoal.tunnel.client import Endpoint, closed_error, dial


@dataclass(frozen=True)
class ExecResult:
    """The command's exit code, or why it could not run (reason: GuestAccessFailed, ...)."""

    exit_code: int | None
    error: str = ""
    reason: str = ""


async def execute(
    endpoint: Endpoint,
    command: list[str],
    *,
    stdout: Callable[[bytes], None],
    stderr: Callable[[bytes], None],
    stdin: AsyncIterator[bytes] | None = None,
    tty: bool = False,
    size: tuple[int, int] = (80, 24),
    resizes: AsyncIterator[tuple[int, int]] | None = None,
) -> ExecResult:
    """Run command in the guest. Raises ApiError when the exec cannot start (no such VM, not
    Running, forbidden) or the connection is lost before the command's status arrived."""
    websocket = await dial(
        endpoint,
        "exec",
        command=command,
        stdin="true" if stdin is not None else "false",
        tty="true" if tty else "false",
        width=size[0],
        height=size[1],
    )

    async def feed() -> None:
        if stdin is not None:
            async for chunk in stdin:
                if chunk:
                    await websocket.send(frames.frame(frames.STDIN, chunk))
            await websocket.send(frames.frame(frames.STDIN))  # end of stdin
        await asyncio.Event().wait()

    async def resize() -> None:
        if resizes is not None:
            async for width, height in resizes:
                await websocket.send(
                    frames.json_frame(frames.RESIZE, {"width": width, "height": height})
                )
        await asyncio.Event().wait()

    senders = [asyncio.create_task(feed()), asyncio.create_task(resize())]
    try:
        async for message in websocket:
            if not isinstance(message, bytes) or not message:
                continue
            channel, payload = frames.parse(message)
            if channel == frames.STDOUT:
                stdout(payload)
            elif channel == frames.STDERR:
                stderr(payload)
            elif channel == frames.STATUS:
                status = json.loads(payload)
                if "exitCode" in status:
                    return ExecResult(int(status["exitCode"]))
                return ExecResult(None, str(status.get("error")), str(status.get("reason")))
    except ConnectionClosed as closed:
        raise closed_error(closed, f"the exec in {endpoint.vm}") from None
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await websocket.close()
    if websocket.close_code is not None and websocket.close_code >= 4000:
        raise closed_error(
            ConnectionClosed(websocket.close_rcvd, None), f"the exec in {endpoint.vm}"
        )
    raise Unavailable(f"the exec in {endpoint.vm} ended without the command's exit status")
