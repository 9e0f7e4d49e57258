"""Pull a KubeVirt containerDisk: a container image whose layers (tar, tar+gzip, tar+zstd) hold
one disk at `disk/NAME.qcow2`, `disk/NAME.img` or `disk/NAME.raw`.

Each layer is streamed from the registry through its decompressor and tar reader, and the disk
member written straight to a file (all-zero blocks left as holes); nothing is held in memory
whole. Every layer's digest is checked once its stream ends. The format is taken from the file's
header (qcow2 magic, else raw), not from its name. Unlike shoal images, an interrupted
containerDisk pull starts over.
"""

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

import zstandard

from shoal.images import chunks, qemuimg
from shoal.images.errors import (
    DigestMismatch,
    DiskFull,
    ImageError,
    ImageFormatError,
    NotAShoalImage,
)
from shoal.images.layout import Metadata, is_shoal
from shoal.images.oci import (
    DOCKER_CONFIG,
    OCI_CONFIG,
    Descriptor,
    ImageManifest,
    RawManifest,
)
from shoal.images.progress import Progress, ProgressFn
from shoal.images.reference import Reference
from shoal.images.registry import RegistryClient
from shoal.images.stored import (
    MANIFEST,
    DiskFormat,
    StoredImage,
    fsync_dir,
    read_record,
    write_durably,
    write_record,
)

PARTIAL_SUFFIX = ".partial"
DISK_SUFFIXES = (".qcow2", ".img", ".raw")
COPY_SIZE = 1024 * 1024
# layer media type -> compression (None: plain tar)
LAYER_TYPES: dict[str, str | None] = {
    "application/vnd.oci.image.layer.v1.tar": None,
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": None,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}


class _BlobReader(io.RawIOBase):
    """A readable file over a blob's byte stream that hashes and counts what passes through."""

    def __init__(self, pieces: Iterator[bytes], progress: Progress) -> None:
        self._pieces = pieces
        self._pending = memoryview(b"")
        self._progress = progress
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "memoryview | bytearray") -> int:  # type: ignore[override]
        while not self._pending:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self.hash.update(piece)
            self.size += len(piece)
            self._progress.advance(len(piece))
            self._pending = memoryview(piece)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def drain(self) -> None:
        """Read to the end, so the digest covers every byte (tar stops at its end marker)."""
        self._pending = memoryview(b"")
        for piece in self._pieces:
            self.hash.update(piece)
            self.size += len(piece)
            self._progress.advance(len(piece))

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _disk_name(member: tarfile.TarInfo) -> str | None:
    """The file name when member is disk/NAME with a disk suffix, or a whiteout of one."""
    parts = [p for p in PurePosixPath(member.name).parts if p not in ("/", ".")]
    if len(parts) != 2 or parts[0] != "disk":
        return None
    return parts[1]


def _copy_sparse(source: IO[bytes], target: Path, size: int) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        position = 0
        while piece := source.read(COPY_SIZE):
            view = memoryview(piece)
            for start, end in chunks.nonzero_runs(piece, position):
                rest, at = view[start:end], position + start
                while rest:
                    written = os.pwrite(fd, rest, at)
                    rest, at = rest[written:], at + written
            position += len(piece)
        if position != size:
            raise ImageFormatError(f"{target.name}: the tar member ended after {position} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def _tar_stream(reader: _BlobReader, compression: str | None) -> tarfile.TarFile:
    buffered = io.BufferedReader(reader, COPY_SIZE)
    if compression == "gzip":
        return tarfile.open(fileobj=buffered, mode="r|gz", bufsize=COPY_SIZE)
    if compression == "zstd":
        stream = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        return tarfile.open(fileobj=stream, mode="r|", bufsize=COPY_SIZE)
    return tarfile.open(fileobj=buffered, mode="r|", bufsize=COPY_SIZE)


def _extract_layer(
    client: RegistryClient,
    ref: Reference,
    layer: Descriptor,
    index: int,
    work: Path,
    disks: dict[str, Path],
    progress: Progress,
) -> None:
    """Stream one layer; disk files found replace those of lower layers (whiteouts delete)."""
    what = f"layer {index} of {ref}"
    if layer.media_type not in LAYER_TYPES:
        raise ImageFormatError(f"{what}: media type {layer.media_type!r} is not a container layer")
    with client.open_blob(ref.repository, layer.digest) as blob:
        reader = _BlobReader(blob.chunks, progress)
        try:
            with _tar_stream(reader, LAYER_TYPES[layer.media_type]) as tar:
                for member in tar:
                    name = _disk_name(member)
                    if name is None:
                        continue
                    if name == ".wh..wh..opq":
                        for path in disks.values():
                            path.unlink(missing_ok=True)
                        disks.clear()
                    elif name.startswith(".wh."):
                        removed = disks.pop(name[4:], None)
                        if removed is not None:
                            removed.unlink(missing_ok=True)
                    elif member.isfile() and name.endswith(DISK_SUFFIXES):
                        source = tar.extractfile(member)
                        assert source is not None
                        target = work / f"layer{index}-{len(disks)}.disk"
                        _copy_sparse(source, target, member.size)
                        old = disks.pop(name, None)
                        if old is not None:
                            old.unlink(missing_ok=True)
                        disks[name] = target
        except (tarfile.TarError, zlib.error, zstandard.ZstdError, EOFError) as error:
            with contextlib.suppress(ImageError):
                reader.drain()
            if reader.digest != layer.digest:
                raise DigestMismatch(f"{what} is corrupt: {error}") from None
            raise ImageFormatError(f"{what} is not a valid tar archive: {error}") from None
        reader.drain()
    if reader.digest != layer.digest or reader.size != layer.size:
        raise DigestMismatch(
            f"{what}: the bytes served do not match digest {layer.digest} "
            "(corrupt in the registry or in transit)"
        )


def _metadata(client: RegistryClient, ref: Reference, config: Descriptor, arch: str) -> Metadata:
    """Defaults for a containerDisk (it carries no VM metadata), on its config's architecture."""
    found = None
    if config.media_type in (OCI_CONFIG, DOCKER_CONFIG):
        try:
            value = json.loads(client.get_blob(ref.repository, config.digest))
        except ValueError:
            value = {}
        found = value.get("architecture") if isinstance(value, dict) else None
    return Metadata.model_validate({"arch": found if found in ("amd64", "arm64") else arch})


def pull_containerdisk(
    client: RegistryClient,
    ref: Reference,
    dest: Path,
    *,
    manifest: tuple[RawManifest, ImageManifest] | None = None,
    arch: str = "amd64",
    progress: ProgressFn | None = None,
) -> StoredImage:
    """Pull the containerDisk at ref into dest (disk.qcow2 or disk.raw, plus image.json).

    Raises NotAShoalImage when no layer holds a disk, DigestMismatch, DiskFull, and the
    registry's errors. dest must not exist."""
    raw, image_manifest = manifest or client.image_manifest(ref, arch)
    if is_shoal(image_manifest):
        raise ImageFormatError(f"{ref} is a shoal image, not a containerDisk")
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    metadata = _metadata(client, ref, image_manifest.config, arch)
    work = dest.with_name(dest.name + PARTIAL_SUFFIX)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    counter = Progress(sum(layer.size for layer in image_manifest.layers), progress)
    disks: dict[str, Path] = {}
    try:
        for index, layer in enumerate(image_manifest.layers):
            _extract_layer(client, ref, layer, index, work, disks, counter)
        if not disks:
            raise NotAShoalImage(
                f"{ref} is neither a shoal image nor a containerDisk: none of its layers holds "
                f"disk/*{', disk/*'.join(DISK_SUFFIXES)}"
            )
        if len(disks) > 1:
            raise ImageFormatError(
                f"{ref} holds several disks ({', '.join(sorted(disks))}); a containerDisk has one"
            )
        found = next(iter(disks.values()))
        size = qemuimg.qcow2_virtual_size(found)
        fmt: DiskFormat = "qcow2" if size is not None else "raw"
        disk_name = f"disk.{fmt}"
        found.rename(work / disk_name)
        write_durably(work / MANIFEST, raw.body)
        write_record(
            work,
            digest=raw.digest,
            reference=str(ref),
            source="containerdisk",
            metadata=metadata,
            disk=disk_name,
            disk_format=fmt,
            virtual_size=size if size is not None else (work / disk_name).stat().st_size,
        )
        fsync_dir(work)
        os.rename(work, dest)
        fsync_dir(dest.parent)
    except OSError as error:
        shutil.rmtree(work, ignore_errors=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"pull of {ref}: no space left on the device of {work}; free some space and "
                "pull again"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return read_record(dest)
