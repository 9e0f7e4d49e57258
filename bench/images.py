"""Image benchmarks: pull of a 2 GiB image with shoal and with skopeo, overlay clones, re-push.

A docker-registry (Debian's `docker-registry serve`) on a free loopback port, storage in a temp
dir. The image: a 2 GiB raw disk, the first GiB random bytes and the second zeros, pushed once
with shoal (64 MiB chunks, zstd level 3: 16 stored chunks of incompressible data, 16 zero chunks
not stored at all).

Pull, shoal vs skopeo, same bytes: both fetch the very same manifest and blobs from the same
registry. skopeo (`skopeo copy docker://... dir:OUT`) downloads the 16 blobs (its default
parallelism), checks each blob's digest and writes the blobs as files. shoal (`pull_image`,
default parallelism) does more: it checks the blob digests too, decompresses every chunk, checks
its uncompressed digest, writes it at its offset into a sparse 2 GiB disk file, and fsyncs before
the image becomes visible. Before timing, every blob is read once so both start with the
registry's storage in the page cache; the runs then alternate (ROUNDS each) and the medians are
reported. MB/s is the image's 2 GiB (2048 MiB, as 2147.5 MB) over the time.

Overlay clone: `qemu-img create -f qcow2 -b BASE -F raw OVERLAY` on a 1 GiB and a 20 GiB sparse
raw base (a little data at the start), median of CLONES runs each, process start included.

Re-push: one byte changed in one chunk of the pushed disk, pushed again to the same tag: blobs
and bytes uploaded (counted by the pusher and in the registry's access log), and the time, once
re-reading and re-compressing every chunk, once with the previous manifest's chunks known (HEAD
only for unchanged chunks).
"""

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.devserver import free_port
from shoal.images.layout import Metadata
from shoal.images.pull import pull_image
from shoal.images.push import known_chunks, push_image
from shoal.images.qemuimg import create_overlay
from shoal.images.reference import parse
from shoal.images.registry import RegistryClient

GIB = 2**30
MIB = 2**20
IMAGE_SIZE = 2 * GIB
ROUNDS = 3
CLONES = 10
REPO = "bench/disk"


@contextlib.contextmanager
def _registry(base: Path) -> Iterator[tuple[str, Path]]:
    """A docker-registry on loopback; yields (host:port, access log)."""
    port = free_port()
    config = base / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = base / "access.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("docker-registry did not start")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}", log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _make_disk(path: Path) -> None:
    with path.open("wb") as file:
        for _ in range(IMAGE_SIZE // 2 // (64 * MIB)):
            file.write(os.urandom(64 * MIB))
        file.truncate(IMAGE_SIZE)


def _upload_puts(log: Path) -> int:
    return len(re.findall(r'"PUT /v2/\S+/blobs/uploads/\S+ HTTP/1.1" 201', log.read_text()))


def _pull_rows(host: str, base: Path, blobs: Path) -> list[dict[str, Any]]:
    ref = parse(f"{host}/{REPO}:v1")
    for blob in blobs.rglob("data"):  # warm the registry's storage in the page cache
        with blob.open("rb") as file:
            while file.read(16 * MIB):
                pass
    shoal_times, skopeo_times = [], []
    for _ in range(ROUNDS):
        out = base / "pulled"
        with RegistryClient(host) as client:
            start = time.perf_counter()
            pull_image(client, ref, out)
            shoal_times.append(time.perf_counter() - start)
        shutil.rmtree(out)
        target = base / "skopeo"
        start = time.perf_counter()
        subprocess.run(
            ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"dir:{target}"],
            check=True,
        )
        skopeo_times.append(time.perf_counter() - start)
        shutil.rmtree(target)
    shoal, skopeo = statistics.median(shoal_times), statistics.median(skopeo_times)
    mb = IMAGE_SIZE / 1e6
    return [
        {"name": "image pull 2 GiB (1 GiB random): shoal", "value": mb / shoal, "unit": "MB/s"},
        {
            "name": "image pull 2 GiB (1 GiB random): skopeo copy",
            "value": mb / skopeo,
            "unit": "MB/s",
        },
        {"name": "image pull 2 GiB: shoal time", "value": shoal, "unit": "s"},
        {"name": "image pull 2 GiB: skopeo copy time", "value": skopeo, "unit": "s"},
        {
            "name": "image pull 2 GiB: shoal speed / skopeo speed",
            "value": skopeo / shoal,
            "unit": "x",
        },
    ]


def _clone_rows(base: Path) -> list[dict[str, Any]]:
    rows = []
    for size_gib in (1, 20):
        disk = base / f"base-{size_gib}g.raw"
        with disk.open("wb") as file:
            file.write(os.urandom(MIB))
            file.truncate(size_gib * GIB)
        times = []
        for i in range(CLONES):
            overlay = base / f"overlay-{size_gib}-{i}.qcow2"
            start = time.perf_counter()
            create_overlay(disk, overlay, "raw")
            times.append((time.perf_counter() - start) * 1000)
            overlay.unlink()
        disk.unlink()
        rows.append(
            {
                "name": f"overlay clone of a {size_gib} GiB base (qemu-img create) p50",
                "value": statistics.median(times),
                "unit": "ms",
            }
        )
    return rows


def _repush_rows(host: str, disk: Path, log: Path, first_layers: Any) -> list[dict[str, Any]]:
    ref = parse(f"{host}/{REPO}:v1")
    with disk.open("r+b") as file:
        file.seek(5 * 64 * MIB + 12345)
        file.write(b"one changed byte"[:1])
    rows = []
    for label, known in (("re-read", None), ("known chunks", known_chunks(first_layers))):
        puts = _upload_puts(log)
        with RegistryClient(host) as client:
            start = time.perf_counter()
            result = push_image(client, ref, disk, Metadata(), known_chunks=known)
            seconds = time.perf_counter() - start
        rows += [
            {
                "name": f"re-push, 1 chunk changed ({label}): blobs uploaded",
                "value": result.uploaded_blobs,
                "unit": "blobs",
            },
            {
                "name": f"re-push, 1 chunk changed ({label}): uploads seen by registry",
                "value": _upload_puts(log) - puts,
                "unit": "blobs",
            },
            {
                "name": f"re-push, 1 chunk changed ({label}): bytes uploaded",
                "value": result.uploaded_bytes / 1e6,
                "unit": "MB",
            },
            {"name": f"re-push, 1 chunk changed ({label}): time", "value": seconds, "unit": "s"},
        ]
        with disk.open("r+b") as file:  # another change for the second variant
            file.seek(9 * 64 * MIB + 777)
            file.write(b"\x01")
    return rows


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-images-") as tmp:
        base = Path(tmp)
        with _registry(base) as (host, log):
            disk = base / "disk.raw"
            _make_disk(disk)
            with RegistryClient(host) as client:
                start = time.perf_counter()
                pushed = push_image(client, parse(f"{host}/{REPO}:v1"), disk, Metadata())
                push_seconds = time.perf_counter() - start
            rows = [
                {
                    "name": "image push 2 GiB (1 GiB random): shoal",
                    "value": IMAGE_SIZE / 1e6 / push_seconds,
                    "unit": "MB/s",
                },
            ]
            rows += _pull_rows(host, base, base / "storage")
            rows += _clone_rows(base)
            rows += _repush_rows(host, disk, log, pushed.layers)
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<64} {row['value']:>10.2f} {row['unit']}")
