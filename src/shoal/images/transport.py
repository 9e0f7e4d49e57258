"""An httpx transport tuned for blobs: 1 MiB socket reads, and uploads without copying.

Blob downloads are the hot path of a pull: with httpcore's 64 KiB reads, per-read overhead in
Python makes httpx about half as fast as with 1 MiB reads on loopback (measured: 1 GiB in 3.4 s
vs 1.6 s). Blob uploads are the hot path of a push: see _Stream.write.
"""

import os
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

READ_SIZE = 1024 * 1024
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, READ_SIZE), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore's own loop does `buffer = buffer[sent:]`, which copies what is left after
        # every send: quadratic for a 64 MiB upload. A memoryview slices without copying, and
        # the sync backend only hands it to socket.send / SSLObject.write, which take buffers.
        self._inner.write(cast(bytes, memoryview(buffer)), timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def big_read_transport(verify: bool, limits: httpx.Limits) -> httpx.BaseTransport | None:
    """The transport, or None (use httpx's own) when a proxy is configured in the environment,
    which httpx only honours with its default transport."""
    if any(os.environ.get(name) or os.environ.get(name.lower()) for name in _PROXY_VARIABLES):
        return None
    transport = httpx.HTTPTransport(verify=verify, limits=limits)
    # httpx takes no network backend; its pool is replaced by one that has ours. Should httpx
    # rename the attribute, this only costs speed: the pool set up by __init__ stays in use.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(),
    )
    return transport
