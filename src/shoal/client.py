"""HTTP clients of the shoal API (sync for the CLI, async for agents) and the contexts file."""

import asyncio
import builtins
import json
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import yaml

from shoal import jsoncodec
from shoal.errors import ApiError, Unavailable, error_from_status
from shoal.files import write_private

API = "/apis/shoal.dev/v1"
# Requests one process keeps in flight to the API at once (the agents of a process share them).
REQUEST_SLOTS = 64
Obj = dict[str, Any]


def _decode(raw: bytes | str) -> Any:
    try:
        return jsoncodec.loads(raw)
    except ValueError:
        return json.loads(raw)  # what orjson refuses, such as integers beyond 64 bits


def _encode(body: Any) -> bytes:
    return jsoncodec.dumps_bytes(body)


def resource_path(
    plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None
) -> str:
    path = f"{API}/namespaces/{namespace}/{plural}" if namespace else f"{API}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def ssl_context(ca_pem: str | None) -> ssl.SSLContext | bool:
    if not ca_pem:
        return True
    return ssl.create_default_context(cadata=ca_pem)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text or response.reason_phrase}
    raise error_from_status(response.status_code, body)


# -- contexts ------------------------------------------------------------------------------


@dataclass
class Context:
    server: str
    token: str
    namespace: str = "default"
    caFingerprint: str | None = None
    caCert: str | None = None


@dataclass
class Contexts:
    current: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    @staticmethod
    def path() -> Path:
        if os.environ.get("SHOAL_CONFIG"):
            return Path(os.environ["SHOAL_CONFIG"])
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "shoal" / "config.yaml"

    @classmethod
    def load(cls) -> "Contexts":
        path = cls.path()
        if not path.exists():
            return cls()
        data = yaml.safe_load(path.read_text()) or {}
        contexts = {name: Context(**value) for name, value in (data.get("contexts") or {}).items()}
        return cls(current=data.get("current"), contexts=contexts)

    def save(self) -> None:
        data = {
            "current": self.current,
            "contexts": {name: asdict(ctx) for name, ctx in self.contexts.items()},
        }
        write_private(self.path(), yaml.safe_dump(data, sort_keys=False))


def connect_websocket(server: str, token: str, ca_pem: str | None, path: str, **params: Any) -> Any:
    """A WebSocket dial to server+path (use with `async with` or await it), with the bearer token.

    Tunnels carry bytes, often compressed already: no per-frame deflate. Frames and the queue of
    received frames are small, so a slow reader holds little memory (see shoal.tunnel.protocol)."""
    from websockets.asyncio.client import connect

    from shoal.tunnel.protocol import MAX_FRAME, MAX_QUEUE

    query = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
    url = "ws" + server.rstrip("/").removeprefix("http") + path + (f"?{query}" if query else "")
    tls = ssl_context(ca_pem) if url.startswith("wss:") else None
    return connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        ssl=tls if isinstance(tls, ssl.SSLContext) else None,
        compression=None,
        max_size=MAX_FRAME,
        max_queue=MAX_QUEUE,
        open_timeout=15,
    )


# -- sync client -----------------------------------------------------------------------------


class Client:
    def __init__(
        self, server: str, token: str, *, ca_pem: str | None = None, timeout: float = 30.0
    ) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl_context(ca_pem),
            timeout=timeout,
        )

    @classmethod
    def from_context(cls, context: Context) -> "Client":
        return cls(context.server, context.token, ca_pem=context.caCert)

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Content-Type": content_type} if content_type else None
        try:
            response = self._http.request(
                method,
                path,
                content=None if body is None else _encode(body),
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=headers
                or ({"Content-Type": "application/json"} if body is not None else None),
            )
        except httpx.TransportError as error:
            raise Unavailable(f"cannot reach {self.server}: {error}") from None
        _raise_for(response)
        return _decode(response.content) if response.content else None

    def get(self, plural: str, name: str, namespace: str | None = None) -> Obj:
        return dict(self.request("GET", resource_path(plural, namespace, name)))

    def list(self, plural: str, namespace: str | None = None, **params: Any) -> Obj:
        return dict(self.request("GET", resource_path(plural, namespace), params=params))

    def list_all(
        self, plural: str, namespace: str | None = None, **params: Any
    ) -> "builtins.list[Obj]":
        """Every item, following continue tokens."""
        items: builtins.list[Obj] = []
        cont = None
        while True:
            page = self.list(plural, namespace, limit=500, **{"continue": cont}, **params)
            items.extend(page["items"])
            cont = page["metadata"].get("continue")
            if not cont:
                return items

    def create(self, plural: str, obj: Obj, namespace: str | None = None) -> Obj:
        return dict(self.request("POST", resource_path(plural, namespace), body=obj))

    def replace(self, plural: str, obj: Obj, namespace: str | None = None) -> Obj:
        name = obj["metadata"]["name"]
        return dict(self.request("PUT", resource_path(plural, namespace, name), body=obj))

    def patch(
        self,
        plural: str,
        name: str,
        patch: Obj,
        namespace: str | None = None,
        *,
        sub: str | None = None,
    ) -> Obj:
        return dict(
            self.request(
                "PATCH",
                resource_path(plural, namespace, name, sub),
                body=patch,
                content_type="application/merge-patch+json",
            )
        )

    def delete(self, plural: str, name: str, namespace: str | None = None) -> Obj:
        return dict(self.request("DELETE", resource_path(plural, namespace, name)))

    def action(
        self, plural: str, name: str, action: str, namespace: str | None = None, body: Any = None
    ) -> Obj:
        return dict(self.request("POST", resource_path(plural, namespace, name, action), body=body))

    def watch(
        self,
        plural: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> Iterator[Obj]:
        """Watch events as dicts; ADDED for existing objects first when no resourceVersion."""
        query = {"watch": "1", "resourceVersion": resource_version, **params}
        if timeout:
            query["timeoutSeconds"] = max(1, int(timeout))
        try:
            with self._http.stream(
                "GET",
                resource_path(plural, namespace),
                params={k: v for k, v in query.items() if v is not None},
                timeout=httpx.Timeout(30.0, read=None),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                for line in response.iter_lines():
                    if line.strip():
                        event = _decode(line)
                        if event.get("type") == "ERROR":
                            raise error_from_status(
                                int(event["object"].get("code", 500)), event["object"]
                            )
                        yield event
        except httpx.TransportError as error:
            raise Unavailable(f"watch on {self.server} broke: {error}") from None

    def stream_bytes(
        self, path: str, *, method: str = "GET", body: Any = None, **params: Any
    ) -> Iterator[bytes]:
        """A streamed response's body as it arrives (no read timeout: it may follow for hours)."""
        try:
            with self._http.stream(
                method,
                path,
                params={k: v for k, v in params.items() if v is not None},
                json=body,
                timeout=httpx.Timeout(30.0, read=None),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                yield from response.iter_bytes()
        except httpx.TransportError as error:
            raise Unavailable(f"stream from {self.server} broke: {error}") from None


# -- async client ----------------------------------------------------------------------------


class AsyncClient:
    def __init__(
        self,
        server: str,
        token: str,
        *,
        ca_pem: str | None = None,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
        watch_http: httpx.AsyncClient | None = None,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        """http serves requests and watch_http the long-lived watch streams, so that streams
        never hold the connections requests wait for. slots caps requests in flight (many agents
        in one process share it), which keeps the connection pool's queue short."""
        self.server = server.rstrip("/")
        self.token = token
        self.ca_pem = ca_pem
        self._headers = {"Authorization": f"Bearer {token}"}
        self._http = http or httpx.AsyncClient(
            base_url=self.server,
            verify=ssl_context(ca_pem),
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=REQUEST_SLOTS, max_keepalive_connections=REQUEST_SLOTS
            ),
        )
        self._watch_http = watch_http or httpx.AsyncClient(
            base_url=self.server, verify=ssl_context(ca_pem), timeout=timeout
        )
        self._slots = slots or asyncio.Semaphore(REQUEST_SLOTS)

    def websocket(self, path: str, **params: Any) -> Any:
        """Dial a WebSocket on the server (use with `async with`), authenticated like requests."""
        return connect_websocket(self.server, self.token, self.ca_pem, path, **params)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._watch_http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            async with self._slots:
                response = await self._http.request(
                    method,
                    self.server + path,
                    content=None if body is None else _encode(body),
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    headers=headers,
                )
        except httpx.TransportError as error:
            raise Unavailable(
                f"cannot reach {self.server}: {type(error).__name__} {error}"
            ) from None
        _raise_for(response)
        return _decode(response.content) if response.content else None

    async def get(self, plural: str, name: str, namespace: str | None = None) -> Obj:
        return dict(await self.request("GET", resource_path(plural, namespace, name)))

    async def patch(
        self,
        plural: str,
        name: str,
        patch: Obj,
        namespace: str | None = None,
        *,
        sub: str | None = None,
    ) -> Obj:
        return dict(
            await self.request(
                "PATCH",
                resource_path(plural, namespace, name, sub),
                body=patch,
                content_type="application/merge-patch+json",
            )
        )

    async def watch(
        self,
        plural: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        **params: Any,
    ) -> AsyncIterator[Obj]:
        query = {"watch": "1", "resourceVersion": resource_version, **params}
        try:
            async with self._watch_http.stream(
                "GET",
                self.server + resource_path(plural, namespace),
                params={k: v for k, v in query.items() if v is not None},
                headers=self._headers,
                timeout=httpx.Timeout(30.0, read=None),
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    if line.strip():
                        event = _decode(line)
                        if event.get("type") == "ERROR":
                            raise error_from_status(
                                int(event["object"].get("code", 500)), event["object"]
                            )
                        yield event
        except httpx.TransportError as error:
            raise Unavailable(f"watch on {self.server} broke: {error}") from None


__all__ = ["ApiError", "AsyncClient", "Client", "Context", "Contexts", "resource_path"]
