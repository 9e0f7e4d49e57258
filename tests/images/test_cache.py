"""The node cache: single-flight pulls, LRU eviction with pins, offline use, credentials."""

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from images.image_helpers import PASSWORD, USER, Registry, disk_digest, free_port, write_disk
from shoal.images import credentials, layout
from shoal.images.cache import CachedImage, ImageCache
from shoal.images.errors import AuthError, NotFound, RegistryUnreachable
from shoal.images.layout import Metadata
from shoal.images.push import push_image
from shoal.images.reference import parse
from shoal.images.stored import RECORD

MIB = 2**20


def _push(registry: Registry, name: str, tmp_path: Path, seed: int, size: int = 4 * MIB) -> str:
    disk = tmp_path / f"{name.replace('/', '_')}.raw"
    write_disk(disk, size, [(0, MIB), (size - MIB, MIB)], seed=seed)
    ref = f"{registry.host}/{name}"
    with registry.client() as client:
        push_image(client, parse(ref), disk, Metadata(), chunk_size=MIB)
    return ref


def _blob_gets(registry: Registry) -> dict[str, int]:
    counts: dict[str, int] = {}
    for access in registry.accesses():
        if access.method == "GET" and "/blobs/sha256:" in access.path:
            digest = access.path.rsplit("/", 1)[1]
            counts[digest] = counts.get(digest, 0) + 1
    return counts


def _chunk_digests(registry: Registry, ref: str) -> set[str]:
    with registry.client() as client:
        _, manifest = client.image_manifest(parse(ref))
    return {layer.digest for layer in manifest.layers if layer.media_type == layout.CHUNK_TYPE}


def test_two_concurrent_ensures_are_one_pull(registry: Registry, tmp_path: Path) -> None:
    ref = _push(registry, "vm/a:v1", tmp_path, seed=1)
    cache = ImageCache(tmp_path / "cache", parallel=2)
    joined = threading.Event()
    results: dict[str, CachedImage] = {}

    def leader_progress(done: int, total: int) -> None:
        joined.wait(30)  # hold the pull until the second ensure has joined it

    def second_progress(done: int, total: int) -> None:
        joined.set()

    def run(name: str, progress: object) -> None:
        results[name] = cache.ensure(ref, progress=progress)  # type: ignore[arg-type]

    first = threading.Thread(target=run, args=("first", leader_progress))
    first.start()
    time.sleep(0.05)
    second = threading.Thread(target=run, args=("second", second_progress))
    second.start()
    first.join(60)
    second.join(60)
    assert joined.is_set(), "the second ensure never joined the first one's pull"
    assert results["first"].path == results["second"].path
    gets = _blob_gets(registry)
    assert all(gets[d] == 1 for d in _chunk_digests(registry, ref))


def test_concurrent_async_ensures_are_one_pull(registry: Registry, tmp_path: Path) -> None:
    ref = _push(registry, "vm/b:v1", tmp_path, seed=2)
    cache = ImageCache(tmp_path / "cache")

    async def both() -> list[CachedImage]:
        return list(await asyncio.gather(cache.ensure_async(ref), cache.ensure_async(ref)))

    one, two = asyncio.run(both())
    assert one.digest == two.digest
    assert disk_digest(one.disk) == disk_digest(two.disk)
    gets = _blob_gets(registry)
    assert all(gets[d] == 1 for d in _chunk_digests(registry, ref))


def _age(image: CachedImage, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(image.path / RECORD, (when, when))


def test_lru_eviction_skips_pinned_images(registry: Registry, tmp_path: Path) -> None:
    a, b, c = (_push(registry, f"vm/{n}:v1", tmp_path, seed=i) for i, n in enumerate("abc"))
    probe = ImageCache(tmp_path / "probe")
    one = probe.ensure(a).size
    cache = ImageCache(tmp_path / "cache", budget=int(2.5 * one))
    image_a = cache.ensure(a, pin=True)
    _age(image_a, 300)
    image_b = cache.ensure(b)
    _age(image_b, 200)
    image_c = cache.ensure(c)  # over budget: b goes, a is older but pinned
    assert {i.digest for i in cache.list()} == {image_a.digest, image_c.digest}
    assert not image_b.path.exists()
    cache.unpin(image_a.digest)
    _age(image_c, 100)
    cache.ensure(b)  # now a is the least recently used and free to go
    assert {i.digest for i in cache.list()} == {image_b.digest, image_c.digest}
    with cache.use(b) as in_use:
        assert not cache.remove(in_use.digest)
        assert cache.evict(0) == [image_c.digest]
    assert cache.remove(image_b.digest) and cache.list() == []


def test_list_reports_size_and_last_use(registry: Registry, tmp_path: Path) -> None:
    ref = _push(registry, "vm/a:v1", tmp_path, seed=3, size=16 * MIB)
    cache = ImageCache(tmp_path / "cache")
    before = time.time()
    image = cache.ensure(ref)
    listed = cache.list()
    assert [i.digest for i in listed] == [image.digest]
    assert 2 * MIB <= listed[0].size < 3 * MIB  # 2 MiB of data in a 16 MiB sparse disk
    assert listed[0].last_used >= before - 1
    assert cache.usage() == listed[0].size


def test_by_digest_and_offline(registry: Registry, tmp_path: Path) -> None:
    ref = _push(registry, "vm/a:v1", tmp_path, seed=4)
    cache = ImageCache(tmp_path / "cache")
    image = cache.ensure(ref)
    assert cache.ensure(image.digest).path == image.path
    assert cache.ensure(f"{ref}@{image.digest}").path == image.path
    registry.kill()
    assert cache.ensure(ref).path == image.path  # registry down: the tag's last known image
    with pytest.raises(RegistryUnreachable):
        cache.ensure(f"{registry.host}/vm/other:v1")
    with pytest.raises(NotFound, match="not in the cache"):
        cache.ensure("sha256:" + "0" * 64)


def test_registry_down_leaves_nothing(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(RegistryUnreachable, match="connection refused"):
        cache.ensure(f"127.0.0.1:{free_port()}/vm:v1")
    assert cache.list() == [] and cache.partials() == []


def test_credentials_come_from_the_login_file(htpasswd_registry: Registry, tmp_path: Path) -> None:
    ref = _push(htpasswd_registry, "private/vm:v1", tmp_path, seed=5)
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(AuthError, match="needs a login"):
        cache.ensure(ref)
    credentials.save_login(htpasswd_registry.host, USER, "wrong")
    with pytest.raises(AuthError, match="wrong user name or password"):
        cache.ensure(ref)
    credentials.save_login(htpasswd_registry.host, USER, PASSWORD)
    assert cache.ensure(ref).disk.is_file()
    assert cache.partials() == []
