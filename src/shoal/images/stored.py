"""An image as stored on a node: a directory with its disk (and kernel, initrd), the manifest,
and `image.json`, the record of what it is. A directory without a readable record is not an image.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from shoal.images.errors import ImageFormatError
from shoal.images.layout import Metadata

RECORD = "image.json"
MANIFEST = "manifest.json"

Source = Literal["shoal", "containerdisk"]
DiskFormat = Literal["raw", "qcow2"]


@dataclass(frozen=True)
class StoredImage:
    path: Path
    digest: str  # of the manifest: the image's identity
    reference: str  # what it was pulled as
    source: Source
    metadata: Metadata
    disk: Path
    disk_format: DiskFormat  # the `-F` of a qcow2 overlay on it
    virtual_size: int
    kernel: Path | None = None
    initrd: Path | None = None


def write_record(
    directory: Path,
    *,
    digest: str,
    reference: str,
    source: Source,
    metadata: Metadata,
    disk: str,
    disk_format: DiskFormat,
    virtual_size: int,
    kernel: str | None = None,
    initrd: str | None = None,
) -> None:
    """Write image.json (durably: the caller renames the directory into place next)."""
    record: dict[str, Any] = {
        "digest": digest,
        "reference": reference,
        "source": source,
        "metadata": metadata.model_dump(),
        "disk": disk,
        "diskFormat": disk_format,
        "virtualSize": virtual_size,
        "kernel": kernel,
        "initrd": initrd,
    }
    write_durably(directory / RECORD, json.dumps(record, indent=2).encode())


def write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_record(directory: Path) -> StoredImage:
    """The StoredImage in directory; raises ImageFormatError when it is not a complete image."""
    try:
        record = json.loads((directory / RECORD).read_text())
        kernel, initrd = record.get("kernel"), record.get("initrd")
        image = StoredImage(
            path=directory,
            digest=str(record["digest"]),
            reference=str(record["reference"]),
            source=record["source"],
            metadata=Metadata.model_validate(record["metadata"]),
            disk=directory / str(record["disk"]),
            disk_format=record["diskFormat"],
            virtual_size=int(record["virtualSize"]),
            kernel=directory / kernel if kernel else None,
            initrd=directory / initrd if initrd else None,
        )
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as error:
        raise ImageFormatError(f"{directory}: not a complete image ({error})") from None
    for path in (image.disk, image.kernel, image.initrd):
        if path is not None and not path.is_file():
            raise ImageFormatError(f"{directory}: {path.name} is missing")
    return image
