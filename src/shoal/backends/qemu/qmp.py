"""QEMU's machine protocol (QMP), one short connection per command.

A connection per command keeps nothing open between calls, so a VM adopted after an agent restart
is driven exactly like one this agent started.
"""

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

# qemu.qmp logs every connection at INFO; one per command would flood an agent's log.
logging.getLogger("qemu.qmp").setLevel(logging.WARNING)


class QMPError(Exception):
    pass


async def execute(
    socket: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
) -> Any:
    client = QMPClient(f"shoal-{socket.parent.name}")
    try:
        await asyncio.wait_for(client.connect(str(socket)), timeout)
        return await asyncio.wait_for(client.execute(command, arguments), timeout)
    except (OSError, TimeoutError) as error:
        raise QMPError(f"QMP {command} on {socket}: {error or type(error).__name__}") from None
    except Exception as error:  # qemu.qmp's own errors (ExecuteError, ConnectError...)
        raise QMPError(f"QMP {command}: {error}") from None
    finally:
        # QEMU may close the socket first (after `quit`), which disconnect() reports as an error.
        with contextlib.suppress(Exception):
            await client.disconnect()


async def run_state(socket: Path) -> str:
    """QEMU's run state: running, paused, shutdown, ... (query-status)."""
    reply = await execute(socket, "query-status")
    return str(reply["status"]) if isinstance(reply, dict) else "unknown"
