"""Push a local disk (and kernel, initrd) to a registry as a shoal image.

The disk is read as raw bytes: a qcow2 (or other qemu-img format) disk is first converted to a
sparse raw file, because chunks must be spans of the guest's disk for their digests to stay the
same when the guest's data does (a qcow2 file's layout depends on its write history). Each
non-zero chunk is hashed and compressed on a worker thread, and uploaded only when the registry
does not have that blob yet, so re-pushing an image with one changed chunk uploads one chunk.
"""

import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import zstandard

from shoal.images import chunks, layout, qemuimg
from shoal.images.chunks import Chunk, Span
from shoal.images.errors import ImageError
from shoal.images.layout import ChunkLayer, DiskImage, FileLayer, ImageConfig, Metadata
from shoal.images.oci import OCI_MANIFEST, Descriptor, sha256_digest
from shoal.images.progress import Progress, ProgressFn
from shoal.images.reference import DEFAULT_TAG, Reference
from shoal.images.registry import RegistryClient
from shoal.images.workers import Cancelled, run_all

DEFAULT_PARALLEL = 4
DEFAULT_LEVEL = 3


@dataclass
class PushResult:
    reference: Reference  # with the manifest digest
    digest: str
    chunks: int = 0  # stored (non-zero) chunks
    zero_chunks: int = 0
    uploaded_blobs: int = 0
    uploaded_bytes: int = 0
    skipped_blobs: int = 0  # already in the registry
    layers: list[Descriptor] = field(default_factory=list)


class _Uploads:
    """Blob uploads shared by the workers: each blob is checked (HEAD) and sent at most once."""

    def __init__(self, client: RegistryClient, repo: str, result: PushResult) -> None:
        self.client = client
        self.repo = repo
        self.result = result
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self._claims: dict[str, threading.Event] = {}

    def ensure(self, digest: str, data: bytes) -> None:
        """Upload the blob unless the registry has it, or another worker is sending it now."""
        with self.lock:
            claim = self._claims.get(digest)
            if claim is None:
                claim = self._claims[digest] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            claim.wait()
            with self.lock:
                self.result.skipped_blobs += 1
            return
        try:
            if self.client.blob_size(self.repo, digest) is not None:
                with self.lock:
                    self.result.skipped_blobs += 1
                return
            if self.stop.is_set():
                raise Cancelled()
            self.client.upload_blob(self.repo, data, digest)
            with self.lock:
                self.result.uploaded_blobs += 1
                self.result.uploaded_bytes += len(data)
        finally:
            claim.set()


def _compress(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(
        level=level, write_checksum=True, write_content_size=True
    ).compress(data)


def push_image(
    client: RegistryClient,
    ref: Reference,
    disk: Path,
    metadata: Metadata,
    *,
    kernel: Path | None = None,
    initrd: Path | None = None,
    disk_format: str | None = None,
    chunk_size: int = chunks.DEFAULT_CHUNK_SIZE,
    parallel: int = DEFAULT_PARALLEL,
    level: int = DEFAULT_LEVEL,
    known_chunks: Mapping[str, Descriptor] | None = None,
    workdir: Path | None = None,
    progress: ProgressFn | None = None,
) -> PushResult:
    """Push disk (raw, or anything qemu-img reads) as ref; returns what was uploaded.

    known_chunks maps uncompressed chunk digests to layers pushed before (say, the base image's
    manifest): such chunks are only checked with a HEAD, not compressed again. progress gets
    (bytes of disk data processed, bytes of disk data in all)."""
    chunks.check_chunk_size(chunk_size)
    if metadata.boot == "kernel" and kernel is None:
        raise ImageError("boot kernel needs a kernel file")
    fmt = disk_format or qemuimg.detect_format(disk)
    with tempfile.TemporaryDirectory(prefix="shoal-push-", dir=workdir) as tmp:
        raw = disk
        if fmt != "raw":
            raw = Path(tmp) / "disk.raw"
            qemuimg.convert_to_raw(disk, raw, fmt)
        return _push_raw(
            client,
            ref,
            raw,
            metadata,
            kernel=kernel,
            initrd=initrd,
            source_format=fmt,
            chunk_size=chunk_size,
            parallel=parallel,
            level=level,
            known=known_chunks or {},
            progress=progress,
        )


def _push_raw(
    client: RegistryClient,
    ref: Reference,
    raw: Path,
    metadata: Metadata,
    *,
    kernel: Path | None,
    initrd: Path | None,
    source_format: str,
    chunk_size: int,
    parallel: int,
    level: int,
    known: Mapping[str, Descriptor],
    progress: ProgressFn | None,
) -> PushResult:
    repo = ref.repository
    result = PushResult(ref, "")
    uploads = _Uploads(client, repo, result)
    chunk_layers: dict[int, ChunkLayer] = {}
    file_layers: dict[str, FileLayer] = {}
    try:
        fd = os.open(raw, os.O_RDONLY)
    except OSError as error:
        raise ImageError(f"cannot read disk {raw}: {error.strerror or error}") from None
    try:
        size = os.fstat(fd).st_size
        spans = chunks.plan(size, chunk_size)
        with_data = chunks.spans_with_data(spans, chunks.data_extents(fd, size))
        result.zero_chunks = len(spans) - len(with_data)
        counter = Progress(sum(s.length for s in with_data), progress)

        def push_span(span: Span) -> None:
            if uploads.stop.is_set():
                raise Cancelled()
            data = _pread(fd, span, raw)
            if chunks.is_zero(data):
                with uploads.lock:
                    result.zero_chunks += 1
                counter.advance(span.length)
                return
            chunk = Chunk(span.offset, span.length, sha256_digest(data))
            reused = known.get(chunk.digest)
            if reused is not None and reused.media_type == layout.CHUNK_TYPE:
                blob = layout.chunk_blob(layout.CHUNK_TYPE, reused.digest, reused.size, chunk)
                if client.blob_size(repo, reused.digest) is not None:
                    with uploads.lock:
                        chunk_layers[span.offset] = ChunkLayer(chunk, blob)
                        result.skipped_blobs += 1
                    counter.advance(span.length)
                    return
            compressed = _compress(data, level)
            del data
            digest = sha256_digest(compressed)
            blob = layout.chunk_blob(layout.CHUNK_TYPE, digest, len(compressed), chunk)
            uploads.ensure(digest, compressed)
            with uploads.lock:
                chunk_layers[span.offset] = ChunkLayer(chunk, blob)
            counter.advance(span.length)

        def push_file(role: str, path: Path) -> None:
            try:
                data = path.read_bytes()
            except OSError as error:
                raise ImageError(f"cannot read {role} {path}: {error.strerror or error}") from None
            compressed = _compress(data, level)
            digest = sha256_digest(compressed)
            media = layout.KERNEL_TYPE if role == "kernel" else layout.INITRD_TYPE
            blob = Descriptor(
                media,
                digest,
                len(compressed),
                chunks.file_annotations(len(data), sha256_digest(data)),
            )
            uploads.ensure(digest, compressed)
            layer = FileLayer(
                "kernel" if role == "kernel" else "initrd",
                blob,
                len(data),
                blob.annotations[chunks.DIGEST],
            )
            with uploads.lock:
                file_layers[role] = layer

        tasks: list[Callable[[], None]] = [partial(push_span, span) for span in with_data]
        for role, path in (("kernel", kernel), ("initrd", initrd)):
            if path is not None:
                tasks.append(partial(push_file, role, path))
        run_all(tasks, parallel, uploads.stop)
    finally:
        os.close(fd)

    config = ImageConfig(
        **metadata.model_dump(),
        diskImage=DiskImage(virtualSize=size, chunkSize=chunk_size, sourceFormat=source_format),
    )
    config_bytes = config.to_bytes()
    config_blob = Descriptor(layout.CONFIG_TYPE, sha256_digest(config_bytes), len(config_bytes))
    uploads.ensure(config_blob.digest, config_bytes)
    ordered_files = [file_layers[r] for r in ("kernel", "initrd") if r in file_layers]
    # no creation time: the same disk and metadata always make the same manifest digest
    manifest = layout.build_manifest(config_blob, list(chunk_layers.values()), ordered_files)
    body = manifest.to_bytes()
    digest = client.put_manifest(repo, ref.tag or DEFAULT_TAG, body, OCI_MANIFEST)
    result.digest = digest
    result.reference = ref.with_digest(digest)
    result.chunks = len(chunk_layers)
    result.layers = list(manifest.layers)
    return result


def _pread(fd: int, span: Span, path: Path) -> bytes:
    try:
        data = os.pread(fd, span.length, span.offset)
        while len(data) < span.length:
            more = os.pread(fd, span.length - len(data), span.offset + len(data))
            if not more:
                raise ImageError(f"{path} shrank while it was being pushed")
            data += more
        return data
    except OSError as error:
        raise ImageError(f"cannot read disk {path}: {error.strerror or error}") from None


def known_chunks(layers: list[Descriptor]) -> dict[str, Descriptor]:
    """Uncompressed digest -> layer, for the chunk layers of a manifest pushed before."""
    out: dict[str, Descriptor] = {}
    for layer in layers:
        digest = layer.annotations.get(chunks.DIGEST)
        if layer.media_type == layout.CHUNK_TYPE and digest:
            out[digest] = layer
    return out
