"""Chunk planning, zero detection, sparse write runs, and chunk annotations."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.images import chunks
from shoal.images.chunks import Chunk, Span
from shoal.images.errors import ImageFormatError

KIB = 1024
BLOCK = chunks.ZERO_BLOCK
DIGEST = "sha256:" + "0" * 64

chunk_sizes = st.integers(1, 64).map(lambda n: n * BLOCK)


@settings(deadline=None)
@given(st.integers(0, 2**27), chunk_sizes)
def test_plan_covers_the_disk_once(size: int, chunk_size: int) -> None:
    spans = chunks.plan(size, chunk_size)
    assert sum(span.length for span in spans) == size
    position = 0
    for span in spans:
        assert span.offset == position
        assert span.offset % chunk_size == 0
        assert 0 < span.length <= chunk_size
        position = span.end
    assert all(span.length == chunk_size for span in spans[:-1])


@pytest.mark.parametrize("bad", [0, -BLOCK, BLOCK + 1, 4096, chunks.MAX_CHUNK_SIZE + BLOCK])
def test_chunk_size_must_be_whole_blocks(bad: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        chunks.check_chunk_size(bad)


@settings(deadline=None)
@given(
    st.integers(0, 2**24),
    chunk_sizes,
    st.lists(st.tuples(st.integers(0, 2**24), st.integers(0, 2**20)), max_size=8),
)
def test_spans_with_data_are_those_overlapping_an_extent(
    size: int, chunk_size: int, raw: list[tuple[int, int]]
) -> None:
    extents = [(start, start + length) for start, length in raw]
    spans = chunks.plan(size, chunk_size)
    expected = [s for s in spans if any(a < s.end and s.offset < b for a, b in extents if b > a)]
    assert chunks.spans_with_data(spans, extents) == expected


@settings(deadline=None)
@given(st.binary(max_size=3 * BLOCK), st.integers(0, 3 * BLOCK))
def test_is_zero(data: bytes, zeros: int) -> None:
    assert chunks.is_zero(data) == (data.count(0) == len(data))
    assert chunks.is_zero(bytes(zeros))


@st.composite
def patchy(draw: st.DrawFn) -> bytes:
    """Bytes made of zero and non-zero stretches (so whole zero blocks occur)."""
    parts = draw(
        st.lists(
            st.one_of(
                st.integers(1, 3 * BLOCK).map(bytes),
                st.binary(min_size=1, max_size=300),
            ),
            max_size=6,
        )
    )
    return b"".join(parts)


@settings(deadline=None)
@given(patchy(), st.integers(0, 4 * BLOCK))
def test_nonzero_runs_skip_only_zero_blocks(data: bytes, position: int) -> None:
    runs = chunks.nonzero_runs(data, position)
    rebuilt = bytearray(len(data))
    previous_end = -1
    for start, end in runs:
        assert 0 <= start < end <= len(data)
        assert start > previous_end  # sorted, merged: never touching
        previous_end = end
        rebuilt[start:end] = data[start:end]
    assert bytes(rebuilt) == data
    # what is skipped is zero, and cut at file-block boundaries (or the data's edges)
    for start, end in runs:
        assert start == 0 or (position + start) % BLOCK == 0
        assert end == len(data) or (position + end) % BLOCK == 0


def test_nonzero_runs_example() -> None:
    data = bytes(BLOCK) + b"x" + bytes(2 * BLOCK - 1) + bytes(BLOCK) + b"y"
    assert chunks.nonzero_runs(data, 0) == [(BLOCK, 2 * BLOCK), (4 * BLOCK, 4 * BLOCK + 1)]
    assert chunks.nonzero_runs(bytes(5 * BLOCK), 123) == []


@settings(deadline=None)
@given(
    st.integers(0, 2**40),
    st.integers(1, 2**30),
    st.text("0123456789abcdef", min_size=64, max_size=64),
)
def test_annotations_round_trip(offset: int, size: int, hexa: str) -> None:
    chunk = Chunk(offset, size, "sha256:" + hexa)
    values = chunks.annotations(chunk)
    assert all(isinstance(v, str) for v in values.values())
    assert chunks.from_annotations(values, "here") == chunk


@pytest.mark.parametrize(
    "values",
    [
        {},
        {chunks.OFFSET: "-1", chunks.SIZE: "1", chunks.DIGEST: DIGEST},
        {chunks.OFFSET: "0", chunks.SIZE: "1e3", chunks.DIGEST: DIGEST},
        {chunks.OFFSET: "0", chunks.SIZE: "10", chunks.DIGEST: "md5:00"},
    ],
)
def test_bad_annotations(values: dict[str, str]) -> None:
    with pytest.raises(ImageFormatError, match="annotation"):
        chunks.from_annotations(values, "layer 3")


def test_check_table() -> None:
    size, cs = 3 * BLOCK + 100, BLOCK
    good = [Chunk(0, cs, DIGEST), Chunk(3 * BLOCK, 100, DIGEST)]
    chunks.check_table(good, size, cs)
    for bad, complaint in [
        ([Chunk(1, cs, DIGEST)], "boundary"),
        ([Chunk(4 * BLOCK, cs, DIGEST)], "boundary"),
        ([Chunk(0, 100, DIGEST)], "size"),
        ([Chunk(3 * BLOCK, cs, DIGEST)], "size"),
        ([Chunk(0, cs, DIGEST), Chunk(0, cs, DIGEST)], "twice"),
    ]:
        with pytest.raises(ImageFormatError, match=complaint):
            chunks.check_table(bad, size, cs)


def test_data_extents_skip_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    mib = 2**20
    with path.open("wb") as file:
        file.truncate(64 * mib)
        file.seek(8 * mib)
        file.write(b"a" * mib)
        file.seek(40 * mib)
        file.write(b"b" * 10)
    with path.open("rb") as file:
        extents = chunks.data_extents(file.fileno(), 64 * mib)
    assert extents, "a file with data has extents"
    covered = [s for s in chunks.plan(64 * mib, mib) if chunks.spans_with_data([s], extents)]
    # filesystems allocate in blocks, never less than the data written
    assert Span(8 * mib, mib) in covered and Span(40 * mib, mib) in covered
    assert len(covered) < 8, f"holes were reported as data: {extents}"


def test_data_extents_of_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with path.open("rb") as file:
        assert chunks.data_extents(file.fileno(), 0) == []
