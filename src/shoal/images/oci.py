"""Generic OCI and docker-v2 image structures: media types, descriptors, manifests, indexes."""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.images.errors import ImageFormatError, NotFound
from shoal.images.reference import is_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*IMAGE_MANIFESTS, *INDEXES))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Descriptor":
        if not isinstance(value, dict):
            raise ImageFormatError(f"{where}: a descriptor must be an object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str) or not is_digest(digest):
            raise ImageFormatError(f"{where}: needs a mediaType and a sha256 digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageFormatError(f"{where}: size must be a non-negative integer")
        annotations = value.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ImageFormatError(f"{where}: annotations must map strings to strings")
        platform = value.get("platform")
        return cls(media_type, digest, size, annotations, platform if platform else None)


@dataclass(frozen=True)
class RawManifest:
    """A manifest as the registry served it: the exact bytes, their type and digest."""

    media_type: str
    body: bytes
    digest: str

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEXES


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            body["annotations"] = dict(self.annotations)
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def media_type_of(body: bytes, header: str | None) -> str:
    """The manifest's own mediaType field, else the Content-Type the registry sent."""
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("mediaType"), str):
        return str(value["mediaType"])
    return (header or "").split(";")[0].strip()


def _load(raw: RawManifest, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.body)
    except ValueError as error:
        raise ImageFormatError(f"{what} is not JSON: {error}") from None
    if not isinstance(value, dict) or value.get("schemaVersion") != 2:
        raise ImageFormatError(f"{what} is not a schemaVersion 2 manifest")
    return value


def parse_image_manifest(raw: RawManifest, what: str = "manifest") -> ImageManifest:
    if raw.media_type not in IMAGE_MANIFESTS:
        raise ImageFormatError(f"{what} has media type {raw.media_type!r}, not an image manifest")
    value = _load(raw, what)
    layers = value.get("layers")
    if not isinstance(layers, list):
        raise ImageFormatError(f"{what}: layers must be a list")
    annotations = value.get("annotations") or {}
    return ImageManifest(
        raw.media_type,
        Descriptor.from_json(value.get("config"), f"{what} config"),
        tuple(Descriptor.from_json(layer, f"{what} layer {i}") for i, layer in enumerate(layers)),
        annotations if isinstance(annotations, dict) else {},
    )


def parse_index(raw: RawManifest, what: str = "index") -> list[Descriptor]:
    value = _load(raw, what)
    entries = value.get("manifests")
    if not isinstance(entries, list):
        raise ImageFormatError(f"{what}: manifests must be a list")
    return [Descriptor.from_json(entry, f"{what} entry {i}") for i, entry in enumerate(entries)]


def pick_platform(entries: list[Descriptor], arch: str, os: str, what: str) -> Descriptor:
    """The index entry for os/arch (an entry without a platform matches anything)."""
    for entry in entries:
        platform = entry.platform or {}
        if platform.get("architecture", arch) == arch and platform.get("os", os) == os:
            return entry
    offered = sorted(
        f"{(e.platform or {}).get('os', '?')}/{(e.platform or {}).get('architecture', '?')}"
        for e in entries
    )
    raise NotFound(f"{what} has no {os}/{arch} image (it has: {', '.join(offered) or 'none'})")
