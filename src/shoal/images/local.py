"""Images made of local files (`shoal image import`): their digests, and the Image object."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.model.meta import API_VERSION

CHUNK = 4 * 2**20


def file_entry(path: Path, advance: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Path (absolute), size and sha256 of a file, read once; advance(n) after each n bytes.

    Raises FileNotFoundError when it is not a regular file, OSError when it cannot be read."""
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    digest = hashlib.sha256()
    with resolved.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            if advance is not None:
                advance(len(chunk))
    return {
        "path": str(resolved),
        "digest": f"sha256:{digest.hexdigest()}",
        "size": resolved.stat().st_size,
    }


def image_object(
    name: str,
    files: dict[str, dict[str, Any]],
    *,
    os: str = "linux",
    arch: str = "amd64",
    boot: str = "disk",
    firmware: str = "bios",
    cmdline: str = "",
    ssh_user: str = "root",
) -> dict[str, Any]:
    """The Image for files {"disk": entry, "kernel": entry?, "initrd": entry?}."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Image",
        "metadata": {"name": name},
        "spec": {
            "source": {"local": files},
            "os": os,
            "arch": arch,
            "boot": boot,
            "firmware": firmware,
            "cmdline": cmdline,
            "sshUser": ssh_user,
        },
    }
