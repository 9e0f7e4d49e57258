"""The shoal image format on top of an OCI image manifest.

- config blob (CONFIG_TYPE): the VM metadata and the disk geometry (ImageConfig, JSON);
- one layer per stored disk chunk (CHUNK_TYPE): the raw bytes of [offset, offset+size),
  zstd-compressed, annotated with offset, uncompressed size and uncompressed sha256; chunks that
  are all zeros are left out of the manifest, so a pull leaves a hole there;
- for direct kernel boot, one layer for the kernel (KERNEL_TYPE) and one for the initrd
  (INITRD_TYPE), zstd-compressed, annotated with their uncompressed size and sha256.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shoal.images import chunks
from shoal.images.chunks import Chunk
from shoal.images.errors import ImageFormatError, NotAShoalImage
from shoal.images.oci import OCI_MANIFEST, Descriptor, ImageManifest
from shoal.model.kinds import Arch, Cpu, DiskQuantity, GuestOS, MemoryQuantity

CONFIG_TYPE = "application/vnd.shoal.image.config.v1+json"
CHUNK_TYPE = "application/vnd.shoal.image.disk.chunk.v1.raw+zstd"
KERNEL_TYPE = "application/vnd.shoal.image.kernel.v1+zstd"
INITRD_TYPE = "application/vnd.shoal.image.initrd.v1+zstd"


class DiskImage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    format: Literal["raw"] = "raw"
    virtualSize: Annotated[int, Field(ge=0)]
    chunkSize: Annotated[int, Field(ge=chunks.ZERO_BLOCK, le=chunks.MAX_CHUNK_SIZE)] = (
        chunks.DEFAULT_CHUNK_SIZE
    )
    # What the pushed file was (qcow2 disks are stored as raw); informative only.
    sourceFormat: str = "raw"

    @model_validator(mode="after")
    def _aligned(self) -> "DiskImage":
        chunks.check_chunk_size(self.chunkSize)
        return self


class Metadata(BaseModel):
    """What a VM needs to know about its image: guest, boot method, defaults, ssh user.

    Unknown fields are ignored, so an older shoal still pulls an image from a newer one."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    os: GuestOS = "linux"
    arch: Arch = "amd64"
    boot: Literal["disk", "kernel"] = "disk"
    firmware: Literal["bios", "uefi"] = "bios"
    cmdline: Annotated[str, Field(max_length=4096)] = ""
    sshUser: Annotated[str, Field(min_length=1, max_length=64)] = "root"
    cpu: Cpu | None = None
    memory: MemoryQuantity | None = None
    disk: DiskQuantity | None = None


class ImageConfig(Metadata):
    """The config blob of a shoal image: the metadata and the disk's geometry."""

    diskImage: DiskImage

    @property
    def metadata(self) -> Metadata:
        return Metadata.model_validate(self.model_dump(exclude={"diskImage"}))

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(), separators=(",", ":"), sort_keys=True).encode()


def parse_config(body: bytes, what: str = "image config") -> ImageConfig:
    try:
        return ImageConfig.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
        )
        raise ImageFormatError(f"{what} is not a valid shoal config: {problems}") from None


@dataclass(frozen=True)
class ChunkLayer:
    chunk: Chunk
    blob: Descriptor


@dataclass(frozen=True)
class FileLayer:
    """A kernel or initrd layer: its blob and its uncompressed size and digest."""

    role: Literal["kernel", "initrd"]
    blob: Descriptor
    size: int
    digest: str


@dataclass(frozen=True)
class ShoalLayers:
    chunks: tuple[ChunkLayer, ...]
    kernel: FileLayer | None = None
    initrd: FileLayer | None = None

    @property
    def files(self) -> tuple[FileLayer, ...]:
        return tuple(layer for layer in (self.kernel, self.initrd) if layer is not None)

    @property
    def blob_bytes(self) -> int:
        """Sum of the compressed sizes: what a full pull downloads."""
        return sum(c.blob.size for c in self.chunks) + sum(f.blob.size for f in self.files)


def is_shoal(manifest: ImageManifest) -> bool:
    return manifest.config.media_type == CONFIG_TYPE


def require_shoal(manifest: ImageManifest, what: str) -> None:
    if not is_shoal(manifest):
        raise NotAShoalImage(
            f"{what} is not a shoal image: its config is {manifest.config.media_type!r}, "
            f"not {CONFIG_TYPE!r} (push it with shoal, or use a containerDisk)"
        )


def build_manifest(
    config: Descriptor,
    chunk_layers: list[ChunkLayer],
    files: list[FileLayer],
    annotations: Mapping[str, str] | None = None,
) -> ImageManifest:
    layers = [layer.blob for layer in sorted(chunk_layers, key=lambda c: c.chunk.offset)]
    layers += [layer.blob for layer in files]
    return ImageManifest(OCI_MANIFEST, config, tuple(layers), dict(annotations or {}))


def chunk_blob(media_type: str, digest: str, size: int, chunk: Chunk) -> Descriptor:
    return Descriptor(media_type, digest, size, chunks.annotations(chunk))


def split_layers(manifest: ImageManifest, config: ImageConfig, what: str) -> ShoalLayers:
    """The manifest's layers as chunks and files, checked against the config's disk geometry.

    Raises ImageFormatError for unknown layer types, bad annotations, or a chunk table that does
    not fit the disk."""
    found: list[ChunkLayer] = []
    files: dict[str, FileLayer] = {}
    for i, blob in enumerate(manifest.layers):
        where = f"{what} layer {i}"
        if blob.media_type == CHUNK_TYPE:
            found.append(ChunkLayer(chunks.from_annotations(blob.annotations, where), blob))
        elif blob.media_type in (KERNEL_TYPE, INITRD_TYPE):
            role: Literal["kernel", "initrd"] = (
                "kernel" if blob.media_type == KERNEL_TYPE else "initrd"
            )
            if role in files:
                raise ImageFormatError(f"{where}: a second {role} layer")
            size, digest = chunks.uncompressed(blob.annotations, where)
            files[role] = FileLayer(role, blob, size, digest)
        else:
            raise ImageFormatError(f"{where}: unknown layer media type {blob.media_type!r}")
    geometry = config.diskImage
    chunks.check_table((c.chunk for c in found), geometry.virtualSize, geometry.chunkSize)
    if config.boot == "kernel" and "kernel" not in files:
        raise ImageFormatError(f"{what}: boot is kernel but the image has no kernel layer")
    return ShoalLayers(
        tuple(sorted(found, key=lambda c: c.chunk.offset)),
        files.get("kernel"),
        files.get("initrd"),
    )
