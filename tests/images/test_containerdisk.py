"""KubeVirt containerDisks: built here, pushed with skopeo or the client, pulled via the cache."""

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from images.image_helpers import QEMU_IMG, SKOPEO, Registry, disk_digest, write_disk
from shoal.images.cache import ImageCache
from shoal.images.errors import DigestMismatch, NotAShoalImage
from shoal.images.oci import OCI_CONFIG, OCI_MANIFEST, Descriptor, ImageManifest, sha256_digest
from shoal.images.stored import MANIFEST, RECORD

MIB = 2**20
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.uid = 107
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _compress(tar: bytes, media_type: str) -> bytes:
    if media_type == TAR_GZIP:
        return gzip.compress(tar, compresslevel=1)
    if media_type == TAR_ZSTD:
        return zstandard.ZstdCompressor().compress(tar)
    return tar


def _image(layers: list[tuple[str, dict[str, bytes]]]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(config, [(media type, blob)]) of a container image with these layers."""
    blobs, diff_ids = [], []
    for media_type, files in layers:
        tar = _tar(files)
        diff_ids.append(sha256_digest(tar))
        blobs.append((media_type, _compress(tar, media_type)))
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    return config, blobs


def _manifest(config: bytes, blobs: list[tuple[str, bytes]]) -> bytes:
    return ImageManifest(
        OCI_MANIFEST,
        Descriptor(OCI_CONFIG, sha256_digest(config), len(config)),
        tuple(Descriptor(t, sha256_digest(b), len(b)) for t, b in blobs),
    ).to_bytes()


def _push_with_client(
    registry: Registry, repo: str, layers: list[tuple[str, dict[str, bytes]]]
) -> str:
    config, blobs = _image(layers)
    with registry.client() as client:
        for blob in [config, *(b for _, b in blobs)]:
            client.upload_blob(repo, blob)
        client.put_manifest(repo, "v1", _manifest(config, blobs), OCI_MANIFEST)
    return f"{registry.host}/{repo}:v1"


def _oci_layout(directory: Path, layers: list[tuple[str, dict[str, bytes]]]) -> None:
    config, blobs = _image(layers)
    manifest = _manifest(config, blobs)
    store = directory / "blobs" / "sha256"
    store.mkdir(parents=True)
    for blob in [config, manifest, *(b for _, b in blobs)]:
        (store / sha256_digest(blob).removeprefix("sha256:")).write_bytes(blob)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha256_digest(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))


@pytest.mark.skipif(SKOPEO is None or QEMU_IMG is None, reason="needs skopeo and qemu-img")
@pytest.mark.parametrize("manifest_format", ["oci", "v2s2"])
def test_qcow2_containerdisk_pushed_by_skopeo(
    registry: Registry, tmp_path: Path, manifest_format: str
) -> None:
    raw, qcow2 = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    write_disk(raw, 8 * MIB, [(0, 100_000), (6 * MIB, 50_000)])
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    layout_dir = tmp_path / "oci"
    _oci_layout(
        layout_dir,
        [
            (TAR_GZIP, {"etc/os-release": b"ID=test\n"}),
            (TAR_GZIP, {"disk/disk.qcow2": qcow2.read_bytes()}),
        ],
    )
    ref = f"{registry.host}/containerdisks/test:v1"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--format",
            manifest_format,
            "--dest-tls-verify=false",
            f"oci:{layout_dir}:v1",
            f"docker://{ref}",
        ],
        check=True,
    )
    image = ImageCache(tmp_path / "cache").ensure(ref)
    assert image.source == "containerdisk" and image.disk_format == "qcow2"
    assert image.disk.name == "disk.qcow2"
    assert image.disk.read_bytes() == qcow2.read_bytes()
    assert image.virtual_size == 8 * MIB
    assert image.metadata.arch == "amd64" and image.metadata.boot == "disk"
    assert sorted(p.name for p in image.path.iterdir()) == ["disk.qcow2", RECORD, MANIFEST]


@pytest.mark.parametrize("media_type", [TAR, TAR_ZSTD])
def test_raw_containerdisk_is_written_sparse(
    registry: Registry, tmp_path: Path, media_type: str
) -> None:
    raw = tmp_path / "disk.raw"
    write_disk(raw, 32 * MIB, [(MIB, 200_000), (30 * MIB, 4096)])
    ref = _push_with_client(
        registry, "cd/raw", [(media_type, {"./disk/root.img": raw.read_bytes()})]
    )
    image = ImageCache(tmp_path / "cache").ensure(ref)
    assert image.disk_format == "raw" and image.virtual_size == 32 * MIB
    assert disk_digest(image.disk) == disk_digest(raw)
    assert image.disk.stat().st_blocks * 512 <= 2 * MIB


def test_later_layers_replace_and_whiteout_disks(registry: Registry, tmp_path: Path) -> None:
    ref = _push_with_client(
        registry,
        "cd/layers",
        [
            (TAR_GZIP, {"disk/old.img": b"o" * 4096, "disk/keep.img": b"k" * 4096}),
            (TAR_GZIP, {"disk/.wh.old.img": b"", "disk/keep.img": b"n" * 8192}),
        ],
    )
    image = ImageCache(tmp_path / "cache").ensure(ref)
    assert image.disk.read_bytes() == b"n" * 8192


def test_image_without_a_disk_is_refused(registry: Registry, tmp_path: Path) -> None:
    ref = _push_with_client(registry, "app/web", [(TAR_GZIP, {"usr/bin/app": b"#!/bin/sh\n"})])
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(NotAShoalImage, match="neither a shoal image nor a containerDisk"):
        cache.ensure(ref)
    assert cache.list() == [] and cache.partials() == []


def test_corrupt_layer_is_refused(registry: Registry, tmp_path: Path) -> None:
    ref = _push_with_client(registry, "cd/bad", [(TAR, {"disk/disk.img": b"\x01" * 300_000})])
    _, blobs = _image([(TAR, {"disk/disk.img": b"\x01" * 300_000})])
    stored = registry.blob_file(sha256_digest(blobs[0][1]))
    data = bytearray(stored.read_bytes())
    data[100_000] ^= 0xFF
    stored.write_bytes(bytes(data))
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(DigestMismatch, match="layer 0"):
        cache.ensure(ref)
    assert cache.list() == [] and cache.partials() == []
