"""The node's image cache: content-addressed by manifest digest, one pull per image at a time,
never a half-downloaded image, least-recently-used eviction under a byte budget, pins.

Layout under the root:
    images/HEX/            a complete image (image.json, disk.raw or disk.qcow2, kernel, initrd)
    images/HEX.partial/    a pull in progress or interrupted (resumed by the next ensure)
    images/HEX.lock        serialises pulls of HEX between processes
    refs.json              reference -> digest last resolved (used when the registry is down)
    trash/                 evicted images on their way out

Pins live in this process only: whoever runs VMs (the agent) pins each image a VM uses, and pins
them again after a restart. Last use is the mtime of the image's image.json.
"""

import asyncio
import builtins
import contextlib
import json
import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from shoal.images import credentials as credential_store
from shoal.images import layout
from shoal.images.containerdisk import pull_containerdisk
from shoal.images.errors import ImageError, ImageFormatError, NotFound, RegistryUnreachable
from shoal.images.oci import ImageManifest, RawManifest
from shoal.images.progress import ProgressFn
from shoal.images.pull import DEFAULT_PARALLEL, pull_image, shoal_config
from shoal.images.reference import Reference, is_digest, parse
from shoal.images.registry import RegistryClient
from shoal.images.stored import RECORD, StoredImage, read_record

CredentialsFn = Callable[[str], tuple[str, str] | None]


@dataclass(frozen=True)
class CachedImage(StoredImage):
    size: int = 0  # bytes allocated on disk (sparse holes not counted)
    last_used: float = 0.0  # epoch seconds

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


class _Evicted(Exception):
    """The image went between lookup and pin."""


@dataclass
class _Flight:
    """A pull in progress: its result for everyone waiting, its progress for every listener."""

    future: "Future[CachedImage]" = field(default_factory=Future)
    listeners: list[ProgressFn] = field(default_factory=list)
    last: tuple[int, int] | None = None


def _allocated(path: Path) -> int:
    total = 0
    for entry in path.rglob("*"):
        with contextlib.suppress(OSError):
            if entry.is_file():
                total += entry.stat().st_blocks * 512
    return total


class ImageCache:
    """The cache at root. budget (bytes) is enforced after each pull by evicting unpinned images
    in least-recently-used order; pinned images are never evicted, so the budget can be exceeded
    while they are in use."""

    def __init__(
        self,
        root: Path,
        *,
        budget: int | None = None,
        parallel: int = DEFAULT_PARALLEL,
        arch: str = "amd64",
        credentials: CredentialsFn = credential_store.lookup,
        insecure: bool = False,
        plain_http: bool | None = None,
    ) -> None:
        self.root = root
        self.images = root / "images"
        self.budget = budget
        self.parallel = parallel
        self.arch = arch
        self.credentials = credentials
        self.insecure = insecure
        self.plain_http = plain_http
        self.images.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._pins: Counter[str] = Counter()

    # -- lookups -------------------------------------------------------------------------------

    def _dir(self, digest: str) -> Path:
        return self.images / digest.removeprefix("sha256:")

    def get(self, digest: str) -> CachedImage | None:
        """The complete image with this manifest digest, or None."""
        path = self._dir(digest)
        if not path.is_dir():
            return None
        try:
            image = read_record(path)
            used = (path / RECORD).stat().st_mtime
        except (ImageFormatError, OSError):
            return None
        fields = {name: getattr(image, name) for name in StoredImage.__dataclass_fields__}
        return CachedImage(**fields, size=_allocated(path), last_used=used)

    def list(self) -> list[CachedImage]:
        """Every complete image, least recently used first."""
        found = []
        for path in self.images.iterdir():
            if len(path.name) == 64 and path.is_dir():
                image = self.get("sha256:" + path.name)
                if image is not None:
                    found.append(image)
        return sorted(found, key=lambda image: image.last_used)

    def touch(self, digest: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self._dir(digest) / RECORD)

    # -- pins ----------------------------------------------------------------------------------

    def pin(self, digest: str) -> None:
        with self._lock:
            self._pins[digest] += 1

    def unpin(self, digest: str) -> None:
        with self._lock:
            if self._pins[digest] <= 1:
                del self._pins[digest]
            else:
                self._pins[digest] -= 1

    def is_pinned(self, digest: str) -> bool:
        with self._lock:
            return self._pins[digest] > 0

    @contextlib.contextmanager
    def pinned(self, digest: str) -> Iterator[None]:
        self.pin(digest)
        try:
            yield
        finally:
            self.unpin(digest)

    @contextlib.contextmanager
    def use(
        self, image: str | Reference, progress: ProgressFn | None = None
    ) -> Iterator[CachedImage]:
        """ensure() the image and keep it pinned for the duration of the block."""
        cached = self.ensure(image, progress=progress, pin=True)
        try:
            yield cached
        finally:
            self.unpin(cached.digest)

    # -- ensure --------------------------------------------------------------------------------

    def ensure(
        self, image: str | Reference, *, progress: ProgressFn | None = None, pin: bool = False
    ) -> CachedImage:
        """The cached image for a reference (pulled if need be) or a manifest digest (which
        must be cached already). Concurrent ensures of one image share one pull; with pin, the
        image is pinned before it is returned (unpin it when done). Without pin, another
        thread's eviction may remove it at any time."""
        for _ in range(3):
            try:
                return self._ensure(image, progress, pin)
            except _Evicted:
                continue  # evicted between lookup and pin: look again
        raise ImageError(f"{image}: evicted again and again while being handed out")

    def _ensure(
        self, image: str | Reference, progress: ProgressFn | None, pin: bool
    ) -> CachedImage:
        if isinstance(image, str) and is_digest(image):
            cached = self.get(image)
            if cached is None:
                raise NotFound(f"image {image} is not in the cache of this node")
            return self._hand_out(cached, pin)
        ref = parse(image) if isinstance(image, str) else image
        if ref.digest and (cached := self.get(ref.digest)) is not None:
            return self._hand_out(cached, pin)
        client = RegistryClient(
            ref.require_host(),
            credentials=self.credentials(ref.require_host()),
            insecure=self.insecure,
            plain_http=self.plain_http,
            connections=max(8, self.parallel * 2),
        )
        with client:
            try:
                raw, manifest = client.image_manifest(ref, self.arch)
            except RegistryUnreachable:
                known = self._known_ref(ref)
                if known is not None and (cached := self.get(known)) is not None:
                    return self._hand_out(cached, pin)  # offline: the last image it named
                raise
            self._remember_ref(ref, raw.digest)
            if (cached := self.get(raw.digest)) is not None:
                return self._hand_out(cached, pin)
            with self._lock:
                flight = self._flights.get(raw.digest)
                leader = flight is None
                if flight is None:
                    flight = self._flights[raw.digest] = _Flight()
                if progress is not None:
                    flight.listeners.append(progress)
                    if flight.last is not None:
                        progress(*flight.last)
            if not leader:
                return self._hand_out(flight.future.result(), pin)
            try:
                cached = self._pull(client, ref.with_digest(raw.digest), raw, manifest, flight)
                if pin:
                    self.pin(cached.digest)
                flight.future.set_result(cached)
            except BaseException as error:
                flight.future.set_exception(error)
                raise
            finally:
                with self._lock:
                    del self._flights[raw.digest]
        return cached

    async def ensure_async(
        self, image: str | Reference, *, progress: ProgressFn | None = None, pin: bool = False
    ) -> CachedImage:
        """ensure() on a worker thread, for asyncio callers (single-flight holds across both)."""
        return await asyncio.to_thread(self.ensure, image, progress=progress, pin=pin)

    def _hand_out(self, cached: CachedImage, pin: bool) -> CachedImage:
        if pin:
            self.pin(cached.digest)  # from here on remove() leaves it alone
            if not (cached.path / RECORD).is_file():
                self.unpin(cached.digest)
                raise _Evicted()
        self.touch(cached.digest)
        return cached

    def _pull(
        self,
        client: RegistryClient,
        ref: Reference,
        raw: RawManifest,
        manifest: ImageManifest,
        flight: _Flight,
    ) -> CachedImage:
        def report(done: int, total: int) -> None:
            with self._lock:
                flight.last = (done, total)
                listeners = list(flight.listeners)
            for listener in listeners:
                listener(done, total)

        dest = self._dir(raw.digest)
        if layout.is_shoal(manifest):
            _, _, layers = shoal_config(client, ref, manifest)
            incoming = sum(c.chunk.size for c in layers.chunks) + sum(f.size for f in layers.files)
        else:
            incoming = sum(layer.size for layer in manifest.layers)
        if self.budget is not None:
            self.evict(self.budget - incoming, keep={raw.digest})
        if layout.is_shoal(manifest):
            pull_image(
                client, ref, dest, parallel=self.parallel, progress=report, manifest=(raw, manifest)
            )
        else:
            pull_containerdisk(
                client, ref, dest, manifest=(raw, manifest), arch=self.arch, progress=report
            )
        cached = self.get(raw.digest)
        if cached is None:
            raise ImageError(f"{ref}: pulled into {dest} but it does not read back as an image")
        if self.budget is not None:
            self.evict(self.budget, keep={raw.digest})
        return cached

    # -- refs ----------------------------------------------------------------------------------

    def _refs_path(self) -> Path:
        return self.root / "refs.json"

    def _read_refs(self) -> dict[str, str]:
        try:
            value = json.loads(self._refs_path().read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _known_ref(self, ref: Reference) -> str | None:
        if ref.digest:
            return ref.digest
        return self._read_refs().get(str(ref))

    def _remember_ref(self, ref: Reference, digest: str) -> None:
        if ref.digest:
            return
        with self._lock:
            refs = self._read_refs()
            if refs.get(str(ref)) == digest:
                return
            refs[str(ref)] = digest
            tmp = self._refs_path().with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps(refs, indent=2, sort_keys=True))
            tmp.replace(self._refs_path())

    # -- eviction ------------------------------------------------------------------------------

    def remove(self, digest: str) -> bool:
        """Delete a cached image unless it is pinned; False when pinned or absent."""
        with self._lock:
            if self._pins[digest] > 0 or digest in self._flights:
                return False
            path = self._dir(digest)
            if not path.is_dir():
                return False
            trash = self.root / "trash"
            trash.mkdir(exist_ok=True)
            # one rename takes it out of the cache at once; deleting the bytes can take a while
            doomed = trash / f"{path.name}-{uuid.uuid4().hex[:8]}"
            path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def evict(
        self, limit: int, keep: set[str] | frozenset[str] = frozenset()
    ) -> builtins.list[str]:
        """Remove unpinned images, least recently used first, until the cache holds at most
        limit bytes (or nothing else can go). Returns the digests removed."""
        images = self.list()
        total = sum(image.size for image in images)
        removed: builtins.list[str] = []
        for image in images:
            if total <= limit:
                break
            if image.digest in keep:
                continue
            if self.remove(image.digest):
                total -= image.size
                removed.append(image.digest)
        return removed

    def usage(self) -> int:
        """Bytes the complete images take on disk."""
        return sum(image.size for image in self.list())

    def partials(self) -> builtins.list[Path]:
        """Interrupted pulls (resumed by the next ensure of their image)."""
        return sorted(p for p in self.images.glob("*.partial") if p.is_dir())
