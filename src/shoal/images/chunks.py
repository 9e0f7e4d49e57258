"""Cutting a raw disk into fixed-size chunks: planning, zero detection, and chunk annotations.

A chunk is a span of the raw disk at a multiple of the chunk size (the last one may be shorter).
All-zero chunks are not stored; inside stored chunks, all-zero blocks of ZERO_BLOCK bytes are not
written on pull, so both leave holes in a sparse file.
"""

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shoal.images.errors import ImageFormatError
from shoal.images.reference import is_digest

MIB = 2**20
DEFAULT_CHUNK_SIZE = 64 * MIB
ZERO_BLOCK = 64 * 1024
MAX_CHUNK_SIZE = 1024 * MIB
_ZEROS = bytes(ZERO_BLOCK)

OFFSET = "dev.shoal.chunk.offset"
SIZE = "dev.shoal.uncompressed.size"
DIGEST = "dev.shoal.uncompressed.digest"


@dataclass(frozen=True, order=True)
class Span:
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Chunk:
    """A stored chunk: where it goes, and its uncompressed size and sha256 digest."""

    offset: int
    size: int
    digest: str


def check_chunk_size(chunk_size: int) -> int:
    if chunk_size <= 0 or chunk_size % ZERO_BLOCK or chunk_size > MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk size {chunk_size} must be a multiple of {ZERO_BLOCK} bytes, "
            f"at most {MAX_CHUNK_SIZE // MIB} MiB"
        )
    return chunk_size


def plan(size: int, chunk_size: int) -> list[Span]:
    """The spans that cover [0, size): one per chunk_size, the last one shorter if need be."""
    if size < 0:
        raise ValueError("size must not be negative")
    check_chunk_size(chunk_size)
    return [Span(offset, min(chunk_size, size - offset)) for offset in range(0, size, chunk_size)]


def spans_with_data(spans: list[Span], extents: Iterable[tuple[int, int]]) -> list[Span]:
    """The spans that overlap at least one (start, end) extent; extents may come in any order."""
    ordered = sorted((start, end) for start, end in extents if end > start)
    out: list[Span] = []
    i = 0
    for span in sorted(spans):
        while i < len(ordered) and ordered[i][1] <= span.offset:
            i += 1
        if i < len(ordered) and ordered[i][0] < span.end:
            out.append(span)
    return out


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) ranges of fd that may hold data: holes of a sparse file are left out.

    Where the filesystem cannot tell (no SEEK_DATA), the whole file is one extent."""
    extents: list[tuple[int, int]] = []
    position = 0
    try:
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if start >= size:
                break
            extents.append((start, end))
            position = end
    except (AttributeError, OSError):
        return [(0, size)] if size else []
    return extents


def is_zero(data: bytes) -> bool:
    for start in range(0, len(data), ZERO_BLOCK):
        if not data.startswith(_ZEROS[: len(data) - start], start):
            return False
    return True


def nonzero_runs(data: bytes, position: int, block: int = ZERO_BLOCK) -> list[tuple[int, int]]:
    """(start, end) slices of data worth writing when data lands at file offset position on a
    hole: all-zero blocks (aligned to file offsets, so partial blocks at the edges count as data
    unless zero) are left out and neighbouring data runs merged."""
    zeros = _ZEROS if block == ZERO_BLOCK else bytes(block)
    runs: list[tuple[int, int]] = []
    start = 0
    while start < len(data):
        end = min(len(data), start + block - (position + start) % block)
        if not data.startswith(zeros[: end - start], start):
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], end)
            else:
                runs.append((start, end))
        start = end
    return runs


def annotations(chunk: Chunk) -> dict[str, str]:
    return {OFFSET: str(chunk.offset), SIZE: str(chunk.size), DIGEST: chunk.digest}


def file_annotations(size: int, digest: str) -> dict[str, str]:
    """Annotations of a whole-file layer (kernel, initrd): uncompressed size and digest."""
    return {SIZE: str(size), DIGEST: digest}


def _int(value: str | None, key: str, where: str) -> int:
    if value is None or not value.isdigit():
        raise ImageFormatError(f"{where}: annotation {key} must be a non-negative integer")
    return int(value)


def uncompressed(values: Mapping[str, str], where: str) -> tuple[int, str]:
    """(size, digest) from a layer's annotations."""
    size = _int(values.get(SIZE), SIZE, where)
    digest = values.get(DIGEST, "")
    if not is_digest(digest):
        raise ImageFormatError(f"{where}: annotation {DIGEST} must be a sha256 digest")
    return size, digest


def from_annotations(values: Mapping[str, str], where: str) -> Chunk:
    size, digest = uncompressed(values, where)
    return Chunk(_int(values.get(OFFSET), OFFSET, where), size, digest)


def check_table(chunks: Iterable[Chunk], virtual_size: int, chunk_size: int) -> None:
    """Every chunk starts on a chunk boundary inside the disk, has the planned length, and no
    two share an offset. Raises ImageFormatError."""
    seen: set[int] = set()
    for chunk in chunks:
        where = f"chunk at offset {chunk.offset}"
        if chunk.offset % chunk_size or not 0 <= chunk.offset < virtual_size:
            raise ImageFormatError(f"{where}: not on a {chunk_size}-byte boundary inside the disk")
        if chunk.size != min(chunk_size, virtual_size - chunk.offset):
            raise ImageFormatError(f"{where}: size {chunk.size} does not match the chunk plan")
        if chunk.offset in seen:
            raise ImageFormatError(f"{where}: listed twice")
        seen.add(chunk.offset)
