"""WebSocket upgrades from a browser page of another site are refused.

A browser sends Origin with every WebSocket handshake and lets any page open one to any host; a
page elsewhere must not reach tunnels or watches with a user's session. Tools (the CLI, agents)
send no Origin and are not affected. Same origin means the Origin's host and port are the ones
the request was sent to (its Host header).
"""

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send


def same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        default = 443 if parts.scheme == "https" else 80
        origin_port = parts.port or default
        target = urlsplit(f"//{host}")
        target_port = target.port or default
    except ValueError:  # a malformed port or address: not ours
        return False
    return (target.hostname or "").lower() == parts.hostname.lower() and target_port == origin_port


class OriginCheck:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            origin = headers.get("origin")
            if origin is not None and not same_origin(origin, headers.get("host", "")):
                # Closing before accepting makes the server answer the handshake with 403.
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)
