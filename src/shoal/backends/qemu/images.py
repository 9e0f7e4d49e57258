"""A qemu node's images: what a VM's Image resolves to on this node, and the node's cache of OCI
images (`<state dir>/images`) with a pin for every VM whose disk sits on a cached image.

An Image with `source.local` names files already on the node. One with `source.oci` (or a VM
whose `image` is itself an OCI reference) is pulled into the cache first; while it is pulled the
VM is Starting with the pull's progress as its message, and a pull that fails makes it Failed
with reason ImagePullFailed. The cache never hands out a half-pulled image.
"""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.backends.base import BackendError
from shoal.images.cache import CachedImage, ImageCache
from shoal.images.errors import ImageError
from shoal.images.layout import Metadata
from shoal.images.reference import parse

PULL_FAILED = "ImagePullFailed"
# What the VM takes from its image: the Image's fields, filled from the OCI config when unset.
IMAGE_FIELDS = ("os", "boot", "firmware", "cmdline", "sshUser", "cpu", "memory", "disk")


class ImagePullFailed(BackendError):
    """The VM's image could not be pulled (the message names the registry's error)."""


@dataclass(frozen=True)
class BaseImage:
    """What a VM's overlay and boot are made from."""

    disk: str
    disk_format: str | None  # None: ask qemu-img
    virtual_size: int | None  # None: ask qemu-img
    kernel: str | None
    initrd: str | None
    settings: dict[str, Any]  # IMAGE_FIELDS that are set
    digest: str | None = None  # the cached image it lives in (pinned while the VM exists)


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB', 2254857830 -> '2.1 GiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def pull_message(reference: str, done: int, total: int) -> str:
    """The VM's message while its image is pulled: `pulling REF: 45% of 2.1 GiB`."""
    if total <= 0:
        return f"pulling {reference}"
    return f"pulling {reference}: {min(100, done * 100 // total)}% of {human_bytes(total)}"


def merged_settings(image: dict[str, Any], metadata: Metadata) -> dict[str, Any]:
    """The Image's fields where it sets them, else the image config's: a VM that names a
    reference directly (no Image object) gets everything from the config."""
    found = metadata.model_dump(exclude_none=True)
    found.update({key: image[key] for key in IMAGE_FIELDS if image.get(key) is not None})
    return {key: found[key] for key in IMAGE_FIELDS if key in found}


def local_base(name: str, local: dict[str, Any], image: dict[str, Any]) -> BaseImage:
    """The base of an Image made of files on the node (`shoal image import`)."""
    for role in ("disk", "kernel", "initrd"):
        entry = local.get(role)
        if entry and not Path(entry["path"]).is_file():
            raise BackendError(f"image {name!r}: its {role} {entry['path']} is not on this node")
    return BaseImage(
        disk=str(local["disk"]["path"]),
        disk_format=None,
        virtual_size=None,
        kernel=(local.get("kernel") or {}).get("path"),
        initrd=(local.get("initrd") or {}).get("path"),
        settings={key: image[key] for key in IMAGE_FIELDS if image.get(key) is not None},
    )


def cached_base(name: str, cached: CachedImage, image: dict[str, Any]) -> BaseImage:
    settings = merged_settings(image, cached.metadata)
    if settings.get("boot") == "kernel" and cached.kernel is None:
        raise BackendError(f"image {name!r} boots a kernel, but {cached.reference} has none")
    return BaseImage(
        disk=str(cached.disk),
        disk_format=cached.disk_format,
        virtual_size=cached.virtual_size,
        kernel=str(cached.kernel) if cached.kernel else None,
        initrd=str(cached.initrd) if cached.initrd else None,
        settings=settings,
        digest=cached.digest,
    )


class NodeImages:
    """The node's image cache, with one pin per VM on a cached image (pins live in this process:
    the backend pins the VMs it finds at start again)."""

    def __init__(self, root: Path, budget: int | None = None) -> None:
        self.cache = ImageCache(root, budget=budget)
        self._pins: dict[str, str] = {}  # vm id -> digest
        self._named: dict[str, str] = {}  # a reference as a VM named it -> digest

    def pin(self, vm_id: str, digest: str) -> None:
        if vm_id not in self._pins:
            self.cache.pin(digest)
            self._pins[vm_id] = digest

    def unpin(self, vm_id: str) -> None:
        digest = self._pins.pop(vm_id, None)
        if digest is not None:
            self.cache.unpin(digest)

    async def pull(self, vm_id: str, reference: str, report: Callable[[str], None]) -> CachedImage:
        """The cached image at reference, pulled if need be (pulls of one image at once are
        one), pinned for vm_id. report(message) gets the progress, on the event loop.

        Raises ImagePullFailed."""
        loop = asyncio.get_running_loop()
        shown = [-1]

        def progress(done: int, total: int) -> None:  # on a pull thread
            percent = done * 100 // total if total else 0
            if percent != shown[0]:
                shown[0] = percent
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                    loop.call_soon_threadsafe(report, pull_message(reference, done, total))

        try:
            cached = await self.cache.ensure_async(parse(reference), progress=progress, pin=True)
        except ImageError as error:
            raise ImagePullFailed(f"pulling {reference} failed: {error}") from None
        except OSError as error:
            raise ImagePullFailed(f"pulling {reference} failed: {error}") from None
        if vm_id in self._pins:
            self.cache.unpin(cached.digest)  # pinned for this VM already
        else:
            self._pins[vm_id] = cached.digest
        self._named[reference] = cached.digest
        return cached

    async def precache(self, reference: str, progress: Callable[[int, int], None]) -> None:
        """Pull reference into the cache for VMs to come (no pin: the budget may evict it while
        no VM uses it). Raises ImagePullFailed."""
        try:
            cached = await self.cache.ensure_async(parse(reference), progress=progress)
        except (ImageError, OSError) as error:
            raise ImagePullFailed(f"pulling {reference} failed: {error}") from None
        self._named[reference] = cached.digest

    def held(self) -> list[str]:
        """The references of the complete images in the cache: as VMs named them, and as
        they were pulled (tag, and digest)."""
        held = {image.digest: image.reference for image in self.cache.list()}
        # a copy in one step: this may run on a thread while the event loop adds to _named
        named = [(name, digest) for name, digest in self._named.copy().items() if digest in held]
        names: set[str] = set()
        for text, digest in [*((ref, digest) for digest, ref in held.items()), *named]:
            with contextlib.suppress(ImageError):
                ref = parse(text)
                names.add(f"{ref.name}@{digest}")
                if ref.tag:
                    names.add(f"{ref.name}:{ref.tag}")
        names.update(name for name, _ in named)
        return sorted(names)
