"""Serve a fake CI system (an ASGI app) on this machine's loopback from a background thread.

A QEMU guest on user-mode networking reaches the same server at the gateway address
(shoal.testguest.build.GATEWAY, 10.0.2.2): `guest_url` is the URL a runner in a VM uses."""

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from shoal.testguest.build import GATEWAY


@dataclass(frozen=True)
class Served:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def guest_url(self) -> str:
        return f"http://{GATEWAY}:{self.port}"


@contextlib.contextmanager
def serve(app: Any) -> Iterator[Served]:
    """Serve app on 127.0.0.1 (a free port) until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(server.serve(sockets=[sock])), daemon=True
    )
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("the fake server did not start")
        yield Served(port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
