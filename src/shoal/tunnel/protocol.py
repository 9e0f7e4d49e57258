"""What the three parties of a tunnel (client, controller, agent) agree on.

A tunnel is a WebSocket from the client to the controller paired with a WebSocket the agent dialed
for it. Binary frames carry the bytes. Text frames are few and small:
- READY, sent once by the agent (and passed on by the controller) when the far end is connected;
- EOF, sent by either end when its side of the byte stream ended (TCP half-close), so a tunnel
  can carry protocols that send a request, close their writing side and read the answer.
A tunnel that cannot be opened, or ends for a reason the user should see, is closed with a code
4000 + an HTTP-like status and the reason as the close message.
"""

import json

CHUNK = 256 * 1024
# A WebSocket frame never carries more than this, so a socket's queue stays small.
MAX_FRAME = 2**20
# Frames a socket buffers for a slow reader before it stops reading (backpressure).
MAX_QUEUE = 8
READY = json.dumps({"ready": True})
EOF = json.dumps({"eof": True})
# A stream the agent refuses is closed with this code and the reason as the message.
REFUSED = 4000
# The WebSocket close codes of a tunnel that ended as it should (normal closure, going away).
NORMAL = 1000
GOING_AWAY = 1001
NORMAL_CLOSES = (NORMAL, GOING_AWAY)
# The reason a close message may carry is at most 123 bytes (RFC 6455).
REASON_LIMIT = 120


def close_code(status: int) -> int:
    """The close code for an HTTP-like status (403 → 4403)."""
    return 4000 + status


def status_of(code: int) -> int | None:
    """The HTTP-like status a close code stands for, if it is one of ours."""
    return code - 4000 if 4100 <= code < 4600 else None


# A tunnel whose byte stream broke at one end (reset, read or write error): the bytes in flight
# may be lost, so the other end resets its stream too instead of ending it cleanly.
BROKEN = close_code(502)


def reason_text(message: str) -> str:
    """A close reason that fits the protocol's limit, cut at a character boundary."""
    encoded = message.encode()[:REASON_LIMIT]
    return encoded.decode(errors="ignore")


def is_eof(message: str) -> bool:
    try:
        return bool(json.loads(message).get("eof"))
    except (ValueError, AttributeError):
        return False
