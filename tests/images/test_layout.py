"""The shoal image format: config blob, manifest layers, and their checks."""

import json

import pytest

from shoal.images import chunks, layout
from shoal.images.chunks import Chunk
from shoal.images.errors import ImageFormatError, NotAShoalImage
from shoal.images.layout import ChunkLayer, DiskImage, FileLayer, ImageConfig, Metadata
from shoal.images.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    RawManifest,
    media_type_of,
    parse_image_manifest,
    parse_index,
    pick_platform,
    sha256_digest,
)

MIB = 2**20


def _digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def _config(**changes: object) -> ImageConfig:
    values: dict[str, object] = {
        "diskImage": {"virtualSize": 3 * MIB + 512, "chunkSize": MIB},
        **changes,
    }
    return ImageConfig.model_validate(values)


def _chunk_layer(offset: int, size: int, n: int) -> ChunkLayer:
    chunk = Chunk(offset, size, _digest(1000 + n))
    return ChunkLayer(chunk, layout.chunk_blob(layout.CHUNK_TYPE, _digest(n), size // 2, chunk))


def test_config_round_trip_and_defaults() -> None:
    config = _config(boot="kernel", cmdline="console=ttyS0", cpu=2, memory="2Gi", sshUser="ci")
    again = layout.parse_config(config.to_bytes())
    assert again == config
    assert again.metadata == Metadata(
        boot="kernel", cmdline="console=ttyS0", cpu=2, memory="2Gi", sshUser="ci"
    )
    body = json.loads(config.to_bytes())
    assert body["diskImage"] == {
        "format": "raw",
        "virtualSize": 3 * MIB + 512,
        "chunkSize": MIB,
        "sourceFormat": "raw",
    }
    assert body["os"] == "linux" and body["firmware"] == "bios"


def test_config_ignores_unknown_fields() -> None:
    body = json.loads(_config().to_bytes())
    body["futureField"] = {"x": 1}
    assert layout.parse_config(json.dumps(body).encode()) == _config()


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"os": "windows"}, "os"),
        ({"arch": "riscv"}, "arch"),
        ({"memory": "12"}, "memory"),
        ({"diskImage": {"virtualSize": 10, "chunkSize": 1000}}, "chunk"),
        ({"diskImage": {"virtualSize": 10, "format": "qcow2"}}, "format"),
        ({"diskImage": None}, "diskImage"),
    ],
)
def test_bad_config(change: dict[str, object], complaint: str) -> None:
    body = json.loads(_config().to_bytes())
    body.update(change)
    with pytest.raises(ImageFormatError, match=complaint):
        layout.parse_config(json.dumps(body).encode(), "r.example/vm config")


def test_manifest_round_trip_and_split() -> None:
    config = _config(boot="kernel")
    config_blob = Descriptor(layout.CONFIG_TYPE, _digest(1), 100)
    layers = [_chunk_layer(2 * MIB, MIB, 2), _chunk_layer(0, MIB, 1), _chunk_layer(3 * MIB, 512, 3)]
    kernel = FileLayer(
        "kernel",
        Descriptor(layout.KERNEL_TYPE, _digest(9), 50, chunks.file_annotations(80, _digest(8))),
        80,
        _digest(8),
    )
    manifest = layout.build_manifest(config_blob, layers, [kernel], {"note": "x"})
    body = manifest.to_bytes()
    raw = RawManifest(media_type_of(body, None), body, sha256_digest(body))
    assert raw.media_type == OCI_MANIFEST
    parsed = parse_image_manifest(raw)
    assert parsed == manifest
    assert layout.is_shoal(parsed)
    split = layout.split_layers(parsed, config, "img")
    assert [c.chunk.offset for c in split.chunks] == [0, 2 * MIB, 3 * MIB]  # sorted, hole at 1M
    assert split.kernel == kernel and split.initrd is None
    assert split.blob_bytes == MIB // 2 * 2 + 256 + 50


def _manifest(
    layers: list[Descriptor], config_type: str = layout.CONFIG_TYPE
) -> layout.ImageManifest:
    return layout.ImageManifest(
        OCI_MANIFEST, Descriptor(config_type, _digest(1), 10), tuple(layers)
    )


def test_split_rejects_bad_layers() -> None:
    config = _config()
    unknown = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", _digest(5), 10)
    with pytest.raises(ImageFormatError, match="unknown layer media type"):
        layout.split_layers(_manifest([unknown]), config, "img")
    misplaced = _chunk_layer(MIB + 1, MIB, 1).blob
    with pytest.raises(ImageFormatError, match="boundary"):
        layout.split_layers(_manifest([misplaced]), config, "img")
    twice = _chunk_layer(0, MIB, 1).blob
    with pytest.raises(ImageFormatError, match="twice"):
        layout.split_layers(_manifest([twice, twice]), config, "img")
    with pytest.raises(ImageFormatError, match="no kernel layer"):
        layout.split_layers(_manifest([]), _config(boot="kernel"), "img")


def test_require_shoal() -> None:
    with pytest.raises(NotAShoalImage, match="not a shoal image"):
        layout.require_shoal(_manifest([], OCI_CONFIG), "r.example/app:v1")


def test_descriptor_validation() -> None:
    with pytest.raises(ImageFormatError, match="sha256"):
        Descriptor.from_json({"mediaType": "x", "digest": "sha256:12", "size": 1}, "d")
    with pytest.raises(ImageFormatError, match="size"):
        Descriptor.from_json({"mediaType": "x", "digest": _digest(1), "size": -1}, "d")
    with pytest.raises(ImageFormatError, match="size"):
        Descriptor.from_json({"mediaType": "x", "digest": _digest(1), "size": True}, "d")


def test_index_platform_choice() -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": _digest(1),
                    "size": 1,
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": _digest(2),
                    "size": 1,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
            ],
        }
    ).encode()
    raw = RawManifest(media_type_of(body, None), body, sha256_digest(body))
    assert raw.is_index
    entries = parse_index(raw)
    assert pick_platform(entries, "amd64", "linux", "x").digest == _digest(2)
    with pytest.raises(Exception, match=r"linux/arm64, linux/amd64|linux/amd64, linux/arm64"):
        pick_platform(entries, "s390x", "linux", "x")


def test_media_type_from_header_when_body_has_none() -> None:
    assert media_type_of(b'{"schemaVersion":2}', f"{OCI_MANIFEST}; charset=utf-8") == OCI_MANIFEST


def test_disk_image_defaults() -> None:
    assert DiskImage(virtualSize=0).chunkSize == chunks.DEFAULT_CHUNK_SIZE
