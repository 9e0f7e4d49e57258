"""The few qemu-img operations images need: what format a disk is, qcow2 to raw, overlays."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from shoal.images.errors import ImageError

QCOW2_MAGIC = b"QFI\xfb"


class QemuImgError(ImageError):
    """qemu-img failed, or is not installed."""


def _run(args: list[str], what: str) -> str:
    if shutil.which(args[0]) is None:
        raise QemuImgError(f"{what}: {args[0]} is not installed (Debian package qemu-utils)")
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise QemuImgError(f"{what}: {result.stderr.strip() or f'exit code {result.returncode}'}")
    return result.stdout


def qcow2_virtual_size(path: Path) -> int | None:
    """The virtual size in a qcow2 header, None when path is not a qcow2 file."""
    with path.open("rb") as file:
        header = file.read(32)
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        return None
    return int.from_bytes(header[24:32], "big")


def info(path: Path) -> dict[str, Any]:
    out = _run(["qemu-img", "info", "--output=json", "-U", str(path)], f"qemu-img info {path}")
    value = json.loads(out)
    return value if isinstance(value, dict) else {}


def detect_format(path: Path) -> str:
    """qcow2 when the file says so; else what qemu-img probes; raw when qemu-img is absent."""
    if qcow2_virtual_size(path) is not None:
        return "qcow2"
    if shutil.which("qemu-img") is None:
        return "raw"
    return str(info(path).get("format") or "raw")


def convert_to_raw(source: Path, target: Path, source_format: str) -> None:
    """A sparse raw copy of source (zero runs become holes)."""
    _run(
        ["qemu-img", "convert", "-q", "-f", source_format, "-O", "raw", str(source), str(target)],
        f"converting {source} to raw",
    )


def create_overlay(base: Path, overlay: Path, base_format: str) -> None:
    """A qcow2 overlay on base: the VM writes there, base stays read-only and shared."""
    _run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(base.resolve()),
            "-F",
            base_format,
            str(overlay),
        ],
        f"creating an overlay on {base}",
    )
