"""The frames of an exec stream (`shoal exec`, `shoal run`, the GitLab executor): binary
WebSocket messages whose first byte names the channel, as Kubernetes' channel protocol does.

client -> guest: STDIN (bytes; an empty payload is the end of stdin), RESIZE ({"width", "height"}).
guest -> client: STDOUT, STDERR (bytes, as the command writes them), then one STATUS
({"exitCode": N}, or {"error": "...", "reason": "..."} when the command could not run) and a
normal close. A command killed by a signal has exitCode 128 + the signal's number, as shells say.
"""

import json
from typing import Any

STDIN = 0
STDOUT = 1
STDERR = 2
STATUS = 3
RESIZE = 4


def frame(channel: int, payload: bytes = b"") -> bytes:
    return bytes([channel]) + payload


def json_frame(channel: int, value: dict[str, Any]) -> bytes:
    return frame(channel, json.dumps(value).encode())


def parse(message: bytes) -> tuple[int, bytes]:
    """(channel, payload); ValueError for an empty message."""
    if not message:
        raise ValueError("an exec frame needs a channel byte")
    return message[0], message[1:]
