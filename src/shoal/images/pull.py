"""Pull a shoal image from a registry into a directory, in parallel, verified, resumable.

Everything is written into `DEST.partial/`; only when every chunk and file has been verified and
synced is it renamed to DEST, so a directory named DEST is always a complete image. The disk is a
sparse raw file truncated to its virtual size: zero chunks are never fetched, and all-zero blocks
inside a chunk are not written.

Resume: `journal` in the partial directory gets a line `start KEY` before a chunk's first write
and `done KEY` after its data is verified and fdatasync'ed, so a rerun skips every `done` chunk.
A chunk whose download broke keeps its compressed prefix in `parts/KEY.part`; the rerun replays
it and fetches the rest with an HTTP Range request. A chunk that was started before is written
densely (zeros too), so no stale bytes from an earlier attempt can survive in a skipped block.
"""

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import zstandard

from shoal.images import chunks, layout
from shoal.images.errors import (
    DigestMismatch,
    DiskFull,
    ImageError,
    RegistryUnreachable,
)
from shoal.images.layout import ImageConfig, ShoalLayers
from shoal.images.oci import Descriptor, ImageManifest, RawManifest
from shoal.images.progress import Progress, ProgressFn
from shoal.images.reference import Reference
from shoal.images.registry import RegistryClient
from shoal.images.stored import (
    MANIFEST,
    StoredImage,
    fsync_dir,
    read_record,
    write_durably,
    write_record,
)
from shoal.images.workers import Cancelled, run_all

DEFAULT_PARALLEL = 4
DEFAULT_RETRIES = 3
PARTIAL_SUFFIX = ".partial"
DISK = "disk.raw"
CONFIG = "config.json"
JOURNAL = "journal"
PARTS = "parts"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def partial_dir(dest: Path) -> Path:
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


class Journal:
    """The append-only record of chunks started and finished in a partial directory."""

    def __init__(self, path: Path) -> None:
        self.started: set[str] = set()
        self.done: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                word, _, key = line.partition(" ")
                if word == "start" and key:
                    self.started.add(key)
                elif word == "done" and key:
                    self.done.add(key)
        self._file = path.open("a")
        self._lock = threading.Lock()

    def start(self, key: str) -> None:
        with self._lock:
            if key not in self.started:
                self.started.add(key)
                self._file.write(f"start {key}\n")
                self._file.flush()

    def finish(self, key: str) -> None:
        with self._lock:
            self.done.add(key)
            self._file.write(f"done {key}\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class _Job:
    key: str  # journal key: "disk-OFFSET", "kernel", "initrd"
    blob: Descriptor
    fd: int
    offset: int  # where the uncompressed bytes go in fd
    size: int
    digest: str  # of the uncompressed bytes
    what: str


class _Stream:
    """One blob being decompressed into place: hashes of both sides, bytes written so far."""

    def __init__(self, job: _Job, write: Callable[[int, int, bytes, bool], None], dense: bool):
        self.job = job
        self.write = write
        self.dense = dense
        self.reset()

    def reset(self) -> None:
        self.decompressor = zstandard.ZstdDecompressor().decompressobj()
        self.blob_hash = hashlib.sha256()
        self.data_hash = hashlib.sha256()
        self.received = 0
        self.written = 0

    def feed(self, piece: bytes) -> None:
        job = self.job
        self.blob_hash.update(piece)
        self.received += len(piece)
        if self.received > job.blob.size:
            raise DigestMismatch(f"{job.what}: the registry sent more than {job.blob.size} bytes")
        try:
            out = self.decompressor.decompress(piece)
        except zstandard.ZstdError as error:
            raise DigestMismatch(f"{job.what} is corrupt: {error}") from None
        if not out:
            return
        if self.written + len(out) > job.size:
            raise DigestMismatch(f"{job.what} decompresses to more than {job.size} bytes")
        self.data_hash.update(out)
        self.write(job.fd, job.offset + self.written, out, not self.dense)
        self.written += len(out)

    def check(self) -> None:
        job = self.job
        if "sha256:" + self.blob_hash.hexdigest() != job.blob.digest:
            raise DigestMismatch(
                f"{job.what}: the bytes served do not match blob digest {job.blob.digest} "
                "(corrupt in the registry or in transit)"
            )
        if not self.decompressor.eof or self.written != job.size:
            raise DigestMismatch(
                f"{job.what}: decompresses to {self.written} bytes, not {job.size}"
            )
        if "sha256:" + self.data_hash.hexdigest() != job.digest:
            raise DigestMismatch(f"{job.what}: its content does not match digest {job.digest}")


class _Puller:
    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        work: Path,
        journal: Journal,
        progress: Progress,
        retries: int,
        durable: bool,
    ) -> None:
        self.client = client
        self.ref = ref
        self.work = work
        self.journal = journal
        self.progress = progress
        self.retries = retries
        self.durable = durable
        self.stop = threading.Event()

    def write(self, fd: int, offset: int, data: bytes, sparse: bool) -> None:
        view = memoryview(data)
        runs = chunks.nonzero_runs(data, offset) if sparse else [(0, len(data))]
        try:
            for start, end in runs:
                piece = view[start:end]
                position = offset + start
                while piece:
                    count = os.pwrite(fd, piece, position)
                    piece, position = piece[count:], position + count
        except OSError as error:
            if error.errno in _NO_SPACE:
                raise _no_space(self.ref, self.work, error) from None
            raise ImageError(f"pull of {self.ref}: cannot write in {self.work}: {error}") from None

    def fetch(self, job: _Job) -> None:
        part = self.work / PARTS / f"{job.key}.part"
        dense = job.key in self.journal.started
        self.journal.start(job.key)
        stream = _Stream(job, self.write, dense)
        received: list[bytes] = []
        prefix = b""
        with contextlib.suppress(FileNotFoundError):
            prefix = part.read_bytes()
        if prefix and len(prefix) < job.blob.size:
            try:
                stream.feed(prefix)
                received.append(prefix)
                self.progress.advance(len(prefix))
            except DigestMismatch:
                stream.reset()
        attempt = 0
        try:
            while True:
                try:
                    self._download(job, stream, received)
                    break
                except RegistryUnreachable:
                    attempt += 1
                    if attempt > self.retries or self.stop.wait(0.25 * 2**attempt):
                        raise
        except (RegistryUnreachable, Cancelled):
            self._save_part(part, received)
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        stream.check()
        if self.durable:
            os.fdatasync(job.fd)
        self.journal.finish(job.key)
        part.unlink(missing_ok=True)

    def _download(self, job: _Job, stream: _Stream, received: list[bytes]) -> None:
        with self.client.open_blob(self.ref.repository, job.blob.digest, stream.received) as blob:
            if blob.start != stream.received:  # the registry ignored the Range
                self.progress.advance(-stream.received)
                stream.reset()
                stream.dense = True
                received.clear()
            for piece in blob.chunks:
                if self.stop.is_set():
                    raise Cancelled()
                stream.feed(piece)
                received.append(piece)
                self.progress.advance(len(piece))
        if stream.received < job.blob.size:
            raise RegistryUnreachable(f"{job.what}: the registry ended the download early")

    def _save_part(self, part: Path, received: list[bytes]) -> None:
        if not received:
            return
        with contextlib.suppress(OSError):
            tmp = part.with_suffix(".tmp")
            with tmp.open("wb") as file:
                for piece in received:
                    file.write(piece)
            tmp.replace(part)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One pull per destination across processes (an agent and a CLI on the same cache)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_work(work: Path, raw: RawManifest, files: list[str]) -> None:
    """Keep a partial pull of the same manifest whose files are all there; anything else there
    is thrown away (its journal could not be trusted)."""
    if work.exists():
        try:
            same = (work / MANIFEST).read_bytes() == raw.body
        except OSError:
            same = False
        if not same or not all((work / name).exists() for name in files):
            shutil.rmtree(work)
    if not work.exists():
        work.mkdir(parents=True)
        write_durably(work / MANIFEST, raw.body)
    (work / PARTS).mkdir(exist_ok=True)


def shoal_config(
    client: RegistryClient, ref: Reference, manifest: ImageManifest
) -> tuple[bytes, ImageConfig, ShoalLayers]:
    """The config blob, config and layers of a shoal image (NotAShoalImage otherwise)."""
    layout.require_shoal(manifest, str(ref))
    body = client.get_blob(ref.repository, manifest.config.digest)
    config = layout.parse_config(body, f"{ref} config")
    return body, config, layout.split_layers(manifest, config, str(ref))


def _no_space(ref: Reference, work: Path, error: OSError) -> DiskFull:
    return DiskFull(
        f"pull of {ref}: no space left on the device of {work} ({error.strerror}); free some "
        "space and pull again: it resumes where it stopped"
    )


def pull_image(
    client: RegistryClient,
    ref: Reference,
    dest: Path,
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: ProgressFn | None = None,
    manifest: tuple[RawManifest, ImageManifest] | None = None,
    arch: str = "amd64",
    retries: int = DEFAULT_RETRIES,
    durable: bool = True,
) -> StoredImage:
    """Pull the shoal image at ref into dest (which must not exist, or hold that very image).

    progress gets (compressed bytes fetched, compressed bytes in all); a resumed pull starts with
    what it already has. Raises NotAShoalImage, DigestMismatch, DiskFull, RegistryUnreachable
    (a rerun resumes), AuthError, NotFound. durable=False skips the fsyncs (tests, benchmarks)."""
    raw, image_manifest = manifest or client.image_manifest(ref, arch)
    config_bytes, config, layers = shoal_config(client, ref, image_manifest)
    with _exclusive(dest.with_name(dest.name + ".lock")):
        if dest.exists():
            existing = read_record(dest)
            if existing.digest != raw.digest:
                raise FileExistsError(f"{dest} already holds another image ({existing.digest})")
            return existing
        work = partial_dir(dest)
        try:
            _open_work(work, raw, [DISK, *(f.role for f in layers.files)])
            _pull_into(client, ref, work, raw, config, layers, parallel, progress, retries, durable)
            write_durably(work / CONFIG, config_bytes)
            write_record(
                work,
                digest=raw.digest,
                reference=str(ref),
                source="shoal",
                metadata=config.metadata,
                disk=DISK,
                disk_format="raw",
                virtual_size=config.diskImage.virtualSize,
                kernel="kernel" if layers.kernel else None,
                initrd="initrd" if layers.initrd else None,
            )
            (work / JOURNAL).unlink(missing_ok=True)
            shutil.rmtree(work / PARTS, ignore_errors=True)
            fsync_dir(work)
            os.rename(work, dest)
            fsync_dir(dest.parent)
        except OSError as error:
            if error.errno in _NO_SPACE:
                raise _no_space(ref, work, error) from None
            raise
    return read_record(dest)


def _pull_into(
    client: RegistryClient,
    ref: Reference,
    work: Path,
    raw: RawManifest,
    config: ImageConfig,
    layers: ShoalLayers,
    parallel: int,
    progress: ProgressFn | None,
    retries: int,
    durable: bool,
) -> None:
    journal = Journal(work / JOURNAL)
    fds: list[int] = []
    try:
        disk_fd = _open_sized(work / DISK, config.diskImage.virtualSize, fds)
        jobs = [
            _Job(
                f"disk-{layer.chunk.offset}",
                layer.blob,
                disk_fd,
                layer.chunk.offset,
                layer.chunk.size,
                layer.chunk.digest,
                f"chunk at offset {layer.chunk.offset} of {ref}",
            )
            for layer in layers.chunks
        ]
        for file in layers.files:
            fd = _open_sized(work / file.role, file.size, fds)
            jobs.append(
                _Job(file.role, file.blob, fd, 0, file.size, file.digest, f"{file.role} of {ref}")
            )
        have = sum(job.blob.size for job in jobs if job.key in journal.done)
        counter = Progress(layers.blob_bytes, progress, have)
        puller = _Puller(client, ref, work, journal, counter, retries, durable)
        todo = [partial(puller.fetch, job) for job in jobs if job.key not in journal.done]
        try:
            run_all(todo, parallel, puller.stop)
        except RegistryUnreachable as error:
            raise type(error)(
                f"{error} ({counter.done} of {counter.total} bytes are kept in {work}; "
                "pull again to resume)"
            ) from None
        if durable:
            for fd in fds:
                os.fsync(fd)
    except OSError as error:
        if error.errno in _NO_SPACE:
            raise _no_space(ref, work, error) from None
        raise
    finally:
        journal.close()
        for fd in fds:
            os.close(fd)


def _open_sized(path: Path, size: int, fds: list[int]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fds.append(fd)
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
    return fd
