"""Pre-caching on the agent: pull the images that ImageCache objects ask this node to keep, and
report each pull's progress or failure in the Node's status (`imagePulls`); a finished pull shows
in `cachedImages` with the next heartbeat, which this triggers at once. The controller gathers
both into each ImageCache's status (shoal.controllers.imagecache)."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from shoal.client import AsyncClient
from shoal.controllers.imagecache import targets
from shoal.errors import ApiError, NotFound
from shoal.model.meta import DNS_NAME

log = logging.getLogger(__name__)
INTERVAL = 5.0  # seconds between looks at the ImageCaches
RETRY_AFTER = 60.0  # seconds before a failed pull is tried again
REPORT_EVERY = 1.0  # seconds between progress reports of a running pull


@runtime_checkable
class Precaches(Protocol):
    """A backend with a node image cache that can pull an image without a VM."""

    async def precache(self, reference: str, progress: Callable[[int, int], None]) -> None:
        """Pull reference into the cache (progress gets bytes done and in all, on a thread).
        Raises BackendError saying why it failed."""
        ...


class Precacher:
    def __init__(
        self,
        client: AsyncClient,
        backend: Precaches,
        node: str,
        cached_changed: Callable[[], Awaitable[None]],
    ) -> None:
        self.client = client
        self.backend = backend
        self.node = node
        self.cached_changed = cached_changed
        self._pulls: dict[str, dict[str, Any]] = {}  # image (as the ImageCache names it) -> entry
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        self._reported: list[dict[str, Any]] | None = None

    async def run(self) -> None:
        try:
            while True:
                with contextlib.suppress(ApiError):
                    await self._round()
                await asyncio.sleep(INTERVAL)
        finally:
            for task in self._tasks.values():
                task.cancel()

    async def _round(self) -> None:
        caches = (await self.client.request("GET", "/apis/shoal.dev/v1/imagecaches"))["items"]
        if not caches and not self._pulls:
            return
        me = await self.client.get("nodes", self.node)
        wanted = {c["spec"]["image"] for c in caches if targets(c, [me])}
        cached = set((me.get("status") or {}).get("cachedImages") or [])
        for image in wanted - cached - set(self._tasks):
            if time.monotonic() - self._failed_at.get(image, -RETRY_AFTER) < RETRY_AFTER:
                continue
            self._tasks[image] = asyncio.create_task(self._pull(image), name=f"precache-{image}")
        for image in set(self._pulls) - wanted:  # no ImageCache wants it any more
            self._pulls.pop(image, None)
        await self._report()

    async def _reference(self, image: str) -> str | None:
        """The OCI reference an ImageCache's image stands for (None: a local Image, whose files
        are on the node already)."""
        if not DNS_NAME.fullmatch(image):
            return image
        try:
            obj = await self.client.get("images", image)
        except NotFound:
            raise LookupError(f"no Image named {image}") from None
        oci = ((obj.get("spec") or {}).get("source") or {}).get("oci")
        return str(oci) if oci else None

    async def _pull(self, image: str) -> None:
        entry: dict[str, Any] = {"image": image, "state": "Caching", "bytes": 0, "totalBytes": 0}
        self._pulls[image] = entry

        def progress(done: int, total: int) -> None:  # on a pull thread
            entry["bytes"], entry["totalBytes"] = done, total

        reporter = asyncio.create_task(self._report_while(entry))
        try:
            reference = await self._reference(image)
            if reference is not None:
                await self.backend.precache(reference, progress)
            self._pulls.pop(image, None)
            self._failed_at.pop(image, None)
            await self.cached_changed()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a registry error, a missing Image, a full disk
            log.warning("node %s: pre-caching %s failed: %s", self.node, image, error)
            entry.update(state="Failed", message=str(error)[:4000])
            self._failed_at[image] = time.monotonic()
        finally:
            reporter.cancel()
            self._tasks.pop(image, None)
            with contextlib.suppress(ApiError):
                await self._report()

    async def _report_while(self, entry: dict[str, Any]) -> None:
        while entry["state"] == "Caching":
            await asyncio.sleep(REPORT_EVERY)
            with contextlib.suppress(ApiError):
                await self._report()

    async def _report(self) -> None:
        pulls = [dict(entry) for entry in self._pulls.values()]
        if pulls == self._reported:
            return
        await self.client.patch("nodes", self.node, {"status": {"imagePulls": pulls}}, sub="status")
        self._reported = pulls
