"""Push and pull of shoal images against the real docker-registry."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from images.image_helpers import QEMU_IMG, CutProxy, Registry, disk_digest, write_disk
from shoal.images import chunks, layout
from shoal.images.cache import ImageCache
from shoal.images.errors import DigestMismatch, DiskFull, NotAShoalImage, RegistryUnreachable
from shoal.images.layout import Metadata
from shoal.images.oci import OCI_CONFIG, OCI_MANIFEST, Descriptor, ImageManifest, sha256_digest
from shoal.images.pull import JOURNAL, PARTS, partial_dir, pull_image
from shoal.images.push import PushResult, known_chunks, push_image
from shoal.images.reference import parse
from shoal.images.registry import RegistryClient

MIB = 2**20
BLOCK = chunks.ZERO_BLOCK
# random bytes at these (offset, length); everything else is zeros
REGIONS = [(0, MIB + MIB // 2), (5 * MIB + 100, 300_000), (12 * MIB, BLOCK), (16 * MIB, 4096 * 3)]
SIZE = 16 * MIB + 4096 * 3  # not a whole number of chunks


def _touched_blocks(regions: list[tuple[int, int]]) -> int:
    blocks: set[int] = set()
    for offset, length in regions:
        blocks.update(range(offset // BLOCK, (offset + length - 1) // BLOCK + 1))
    return len(blocks)


def _chunk_gets(registry: Registry, start: int | None = None) -> dict[str, list[tuple[int, int]]]:
    """blob digest -> [(status, bytes)] of the blob GETs in one registry run."""
    found: dict[str, list[tuple[int, int]]] = {}
    for access in registry.accesses(start):
        if access.method == "GET" and "/blobs/sha256:" in access.path:
            found.setdefault(access.path.rsplit("/", 1)[1], []).append((access.status, access.size))
    return found


def _uploads(registry: Registry, since: int) -> int:
    return sum(
        1
        for a in registry.accesses()[since:]
        if a.method == "PUT" and "/blobs/uploads/" in a.path and a.status == 201
    )


def _push(registry: Registry, ref: str, disk: Path, **options: object) -> PushResult:
    options.setdefault("chunk_size", MIB)
    with registry.client() as client:
        return push_image(client, parse(ref), disk, options.pop("metadata", Metadata()), **options)  # type: ignore[arg-type]


def test_push_pull_round_trip_is_identical_and_sparse(registry: Registry, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    write_disk(disk, SIZE, REGIONS)
    ref = f"{registry.host}/vm/base:v1"
    meta = Metadata(os="linux", firmware="uefi", sshUser="ci", cpu=2, memory="2Gi")
    pushed = _push(registry, ref, disk, metadata=meta, parallel=3)
    assert pushed.chunks == 5 and pushed.zero_chunks == 12
    assert pushed.uploaded_blobs == 6  # 5 chunks and the config
    progress: list[tuple[int, int]] = []
    with registry.client() as client:
        pulled = pull_image(
            client,
            parse(ref),
            tmp_path / "out",
            parallel=3,
            progress=lambda d, t: progress.append((d, t)),
        )
    assert disk_digest(pulled.disk) == disk_digest(disk)
    assert pulled.disk.stat().st_size == SIZE
    assert pulled.disk.stat().st_blocks * 512 <= _touched_blocks(REGIONS) * BLOCK
    assert pulled.digest == pushed.digest and pulled.metadata == meta
    assert (pulled.disk_format, pulled.virtual_size, pulled.source) == ("raw", SIZE, "shoal")
    assert progress[-1][0] == progress[-1][1] == sum(layer.size for layer in pushed.layers)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert sorted(os.listdir(tmp_path / "out")) == [
        "config.json",
        "disk.raw",
        "image.json",
        "manifest.json",
    ]
    assert not partial_dir(tmp_path / "out").exists()
    # pulling again into the same place is a no-op
    with registry.client() as client:
        assert pull_image(client, parse(ref), tmp_path / "out").digest == pushed.digest


def test_kernel_boot_image(registry: Registry, tmp_path: Path) -> None:
    disk, kernel, initrd = tmp_path / "root.raw", tmp_path / "vmlinuz", tmp_path / "initrd"
    write_disk(disk, 4 * MIB, [(MIB, 1000)])
    kernel.write_bytes(os.urandom(300_000))
    initrd.write_bytes(b"initrd" * 50_000)
    meta = Metadata(boot="kernel", cmdline="console=ttyS0 root=/dev/vda")
    ref = f"{registry.host}/vm/kernel:v1"
    _push(registry, ref, disk, metadata=meta, kernel=kernel, initrd=initrd)
    with registry.client() as client:
        pulled = pull_image(client, parse(ref), tmp_path / "out")
    assert pulled.kernel is not None and pulled.initrd is not None
    assert pulled.kernel.read_bytes() == kernel.read_bytes()
    assert pulled.initrd.read_bytes() == initrd.read_bytes()
    assert disk_digest(pulled.disk) == disk_digest(disk)
    assert pulled.metadata.cmdline == "console=ttyS0 root=/dev/vda"


@pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed")
def test_qcow2_disk_is_pushed_as_raw(registry: Registry, tmp_path: Path) -> None:
    raw, qcow2 = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    write_disk(raw, 8 * MIB, [(2 * MIB, 70_000), (7 * MIB, 5)])
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    ref = f"{registry.host}/vm/q:v1"
    pushed = _push(registry, ref, qcow2)
    assert pushed.chunks == 2
    with registry.client() as client:
        pulled = pull_image(client, parse(ref), tmp_path / "out")
        config = layout.parse_config(
            client.get_blob("vm/q", client.image_manifest(parse(ref))[1].config.digest)
        )
    assert disk_digest(pulled.disk) == disk_digest(raw)
    assert config.diskImage.sourceFormat == "qcow2"


def test_repush_with_one_changed_chunk_uploads_one_blob(registry: Registry, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    write_disk(disk, SIZE, REGIONS)
    ref = f"{registry.host}/vm/base:v1"
    first = _push(registry, ref, disk)
    with disk.open("r+b") as file:
        file.seek(12 * MIB + 10)
        file.write(b"changed")
    before = len(registry.accesses())
    second = _push(registry, ref, disk)
    assert (second.uploaded_blobs, second.skipped_blobs) == (1, 5)
    assert _uploads(registry, before) == 1
    changed = {layer.digest for layer in second.layers} - {layer.digest for layer in first.layers}
    assert len(changed) == 1
    # with the previous manifest's chunks known, unchanged chunks are not even compressed
    before = len(registry.accesses())
    third = _push(
        registry, f"{registry.host}/vm/base:v2", disk, known_chunks=known_chunks(second.layers)
    )
    assert third.uploaded_blobs == 0 and third.digest == second.digest  # reproducible
    assert _uploads(registry, before) == 0


def test_corrupt_chunk_is_refused_and_nothing_usable_is_cached(
    registry: Registry, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.raw"
    write_disk(disk, SIZE, REGIONS)
    ref = f"{registry.host}/vm/base:v1"
    pushed = _push(registry, ref, disk)
    victim = [layer for layer in pushed.layers if layer.media_type == layout.CHUNK_TYPE][-1]
    stored = registry.blob_file(victim.digest)
    original = stored.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    stored.write_bytes(bytes(tampered))
    cache = ImageCache(tmp_path / "cache", parallel=1)
    with pytest.raises(
        DigestMismatch, match=rf"chunk at offset {victim.annotations[chunks.OFFSET]}"
    ):
        cache.ensure(ref)
    assert cache.list() == []
    assert [p.name for p in (tmp_path / "cache" / "images").iterdir() if len(p.name) == 64] == []
    assert len(cache.partials()) == 1
    # repaired in the registry: the retry fetches only the chunk that failed
    stored.write_bytes(original)
    registry.kill()
    registry.start()
    image = cache.ensure(ref)
    assert disk_digest(image.disk) == disk_digest(disk)
    chunk_digests = {layer.digest for layer in pushed.layers}
    assert {d for d in _chunk_gets(registry) if d in chunk_digests} == {victim.digest}


@pytest.mark.slow
def test_interrupted_pull_resumes_without_refetching_finished_chunks(
    registry: Registry, tmp_path: Path
) -> None:
    chunk = 4 * MIB
    disk = tmp_path / "disk.raw"
    write_disk(disk, 12 * chunk, [(0, 12 * chunk)])
    ref = f"{registry.host}/vm/big:v1"
    pushed = _push(registry, ref, disk, chunk_size=chunk)
    by_key = {
        f"disk-{layer.annotations[chunks.OFFSET]}": layer
        for layer in pushed.layers
        if layer.media_type == layout.CHUNK_TYPE
    }
    dest = tmp_path / "out"
    killed: list[int] = []

    def kill_half_way(done: int, total: int) -> None:
        if done >= total // 2 and not killed:
            killed.append(done)
            registry.kill()

    with (
        registry.client() as client,
        pytest.raises(RegistryUnreachable, match="pull again to resume"),
    ):
        pull_image(
            client, parse(ref), dest, parallel=2, retries=1, progress=kill_half_way, durable=False
        )
    assert killed and not dest.exists()
    journal = (partial_dir(dest) / JOURNAL).read_text().split()
    done_keys = {journal[i + 1] for i in range(0, len(journal), 2) if journal[i] == "done"}
    assert 0 < len(done_keys) < len(by_key)
    parts = {p.stem: p.stat().st_size for p in (partial_dir(dest) / PARTS).glob("*.part")}

    registry.start()  # same port, same storage
    with registry.client() as client:
        pulled = pull_image(client, parse(ref), dest, parallel=2)
    assert disk_digest(pulled.disk) == disk_digest(disk)
    gets = _chunk_gets(registry)
    refetched = {key for key, layer in by_key.items() if layer.digest in gets}
    assert refetched == set(by_key) - done_keys
    for key in refetched:
        assert len(gets[by_key[key].digest]) == 1
    for key, kept in parts.items():
        status, size = gets[by_key[key].digest][0]
        assert (status, size) == (206, by_key[key].size - kept)


def test_broken_download_resumes_with_range_in_the_same_run(
    registry: Registry, cut_proxy: CutProxy, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.raw"
    write_disk(disk, 8 * MIB, [(0, 8 * MIB)])
    _push(registry, f"{registry.host}/vm/r:v1", disk, chunk_size=4 * MIB)
    cut_proxy.cut_after = 2 * MIB
    with RegistryClient(cut_proxy.host) as client:
        pulled = pull_image(
            client, parse(f"{cut_proxy.host}/vm/r:v1"), tmp_path / "out", parallel=1
        )
    assert cut_proxy.cuts == 1
    assert disk_digest(pulled.disk) == disk_digest(disk)
    ranged = [
        size
        for requests in _chunk_gets(registry).values()
        for status, size in requests
        if status == 206
    ]
    assert len(ranged) == 1 and 2 * MIB < ranged[0] < 4 * MIB + 1000


def test_partial_blob_survives_a_failed_run_and_resumes_with_range(
    registry: Registry, cut_proxy: CutProxy, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.raw"
    write_disk(disk, 8 * MIB, [(0, 8 * MIB)])
    pushed = _push(registry, f"{registry.host}/vm/r:v1", disk, chunk_size=4 * MIB)
    ref, dest = parse(f"{cut_proxy.host}/vm/r:v1"), tmp_path / "out"
    cut_proxy.cut_after, cut_proxy.down_after_cut = 3 * MIB, True
    with RegistryClient(cut_proxy.host) as client, pytest.raises(RegistryUnreachable):
        pull_image(client, ref, dest, parallel=1, retries=1)
    parts = list((partial_dir(dest) / PARTS).glob("*.part"))
    assert len(parts) == 1
    kept = parts[0].stat().st_size
    first = next(layer for layer in pushed.layers if layer.annotations.get(chunks.OFFSET) == "0")
    assert parts[0].stem == "disk-0" and 0 < kept < first.size
    cut_proxy.down = False
    with RegistryClient(cut_proxy.host) as client:
        pulled = pull_image(client, ref, dest, parallel=1)
    assert disk_digest(pulled.disk) == disk_digest(disk)
    assert (206, first.size - kept) in _chunk_gets(registry)[first.digest]


def test_disk_full_keeps_a_resumable_partial(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk.raw"
    write_disk(disk, SIZE, REGIONS)
    ref = f"{registry.host}/vm/base:v1"
    pushed = _push(registry, ref, disk)
    real_pwrite, written = os.pwrite, [0]

    def filling_up(fd: int, data: bytes, offset: int) -> int:
        # room for the first two chunks (1.5 MiB of data), not for the third
        if written[0] + len(data) > MIB + MIB // 2 + 100_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", filling_up)
    dest = tmp_path / "out"
    with registry.client() as client, pytest.raises(DiskFull, match=r"no space left.*resumes"):
        pull_image(client, parse(ref), dest, parallel=1)
    assert not dest.exists() and partial_dir(dest).is_dir()
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    before = _chunk_gets(registry)
    with registry.client() as client:
        pulled = pull_image(client, parse(ref), dest, parallel=1)
    assert disk_digest(pulled.disk) == disk_digest(disk)
    after = _chunk_gets(registry)
    chunk_digests = [layer.digest for layer in pushed.layers]
    again = [d for d in chunk_digests if len(after.get(d, [])) > len(before.get(d, []))]
    assert 0 < len(again) < len(chunk_digests)


def test_a_container_image_is_not_a_shoal_image(registry: Registry, tmp_path: Path) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    with registry.client() as client:
        client.upload_blob("app", config)
        body = ImageManifest(
            OCI_MANIFEST, Descriptor(OCI_CONFIG, sha256_digest(config), len(config)), ()
        ).to_bytes()
        client.put_manifest("app", "v1", body, OCI_MANIFEST)
        with pytest.raises(NotAShoalImage, match="not a shoal image"):
            pull_image(client, parse(f"{registry.host}/app:v1"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
