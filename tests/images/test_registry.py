"""The registry client against the real docker-registry: blobs, manifests, auth, failures."""

from pathlib import Path

import pytest

from images.image_helpers import PASSWORD, USER, Registry, free_port
from shoal.images.errors import (
    AuthError,
    DigestMismatch,
    NotFound,
    RegistryUnreachable,
)
from shoal.images.oci import OCI_CONFIG, OCI_MANIFEST, Descriptor, ImageManifest, sha256_digest
from shoal.images.pull import pull_image
from shoal.images.reference import parse
from shoal.images.registry import RegistryClient, is_loopback


def test_blob_upload_both_ways_and_ranged_download(registry: Registry) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    with registry.client() as client:
        whole = client.upload_blob("team/vm", data)
        assert whole == sha256_digest(data)
        pieces = client.upload_blob("team/vm", data[::-1], chunk_size=300_000)
        assert client.blob_size("team/vm", whole) == len(data)
        assert client.get_blob("team/vm", pieces) == data[::-1]
        assert client.blob_size("team/vm", sha256_digest(b"absent")) is None
        with client.open_blob("team/vm", whole, start=1000) as blob:
            assert blob.start == 1000
            assert b"".join(blob.chunks) == data[1000:]
        with pytest.raises(DigestMismatch, match="another digest"):
            client.upload_blob("team/vm", b"abc", sha256_digest(b"abd"))
    methods = [(a.method, a.status) for a in registry.accesses()]
    assert ("PATCH", 202) in methods
    assert ("GET", 206) in methods


def test_manifests(registry: Registry) -> None:
    with registry.client() as client:
        config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
        client.upload_blob("app", config)
        manifest = ImageManifest(
            OCI_MANIFEST, Descriptor(OCI_CONFIG, sha256_digest(config), len(config)), ()
        )
        digest = client.put_manifest("app", "v1", manifest.to_bytes(), OCI_MANIFEST)
        by_tag = client.get_manifest("app", "v1")
        assert by_tag.digest == digest and by_tag.media_type == OCI_MANIFEST
        assert client.get_manifest("app", digest).body == manifest.to_bytes()
        _, parsed = client.image_manifest(parse(f"{registry.host}/app:v1"))
        assert parsed == manifest
        with pytest.raises(NotFound, match=rf"no image app:v2 on {registry.host}"):
            client.get_manifest("app", "v2")
        with pytest.raises(NotFound, match="no image nothing/here:v1"):
            client.get_manifest("nothing/here", "v1")


@pytest.mark.parametrize("mode", ["htpasswd_registry", "token_registry"])
def test_auth_modes(mode: str, request: pytest.FixtureRequest) -> None:
    registry: Registry = request.getfixturevalue(mode)
    with registry.client() as client:
        client.ping()
        digest = client.upload_blob("private/vm", b"data")
        assert client.get_blob("private/vm", digest) == b"data"
    with (
        registry.client(credentials=(USER, "wrong")) as client,
        pytest.raises(AuthError, match=rf"user '{USER}'.*wrong user name or password"),
    ):
        client.blob_size("private/vm", digest)
    with (
        registry.client(credentials=None) as client,
        pytest.raises(
            AuthError, match=rf"needs a login: run `shoal registry login {registry.host}`"
        ),
    ):
        client.get_blob("private/vm", digest)
    if registry.token_service is not None:
        # The scope the registry's challenge named, passed on as it came (the registry lists
        # the actions in no fixed order).
        asked = [
            r["scope"][0].rpartition(":") for r in registry.token_service.requests if r.get("scope")
        ]
        scopes = [(repository, set(actions.split(","))) for repository, _, actions in asked]
        assert ("repository:private/vm", {"pull", "push"}) in scopes
        assert all(r["service"] == ["shoal-test-registry"] for r in registry.token_service.requests)
    assert registry.credentials == (USER, PASSWORD)


def test_registry_down() -> None:
    host = f"127.0.0.1:{free_port()}"
    with RegistryClient(host) as client, pytest.raises(RegistryUnreachable) as caught:
        client.get_manifest("vm", "latest")
    message = str(caught.value)
    assert "connection refused" in message and host in message
    assert "is the registry running" in message


def test_tls_mismatch_and_insecure_fallback(registry: Registry) -> None:
    with (
        RegistryClient(registry.host, plain_http=False) as client,
        pytest.raises(RegistryUnreachable, match=r"does not speak TLS.*--insecure"),
    ):
        client.ping()
    with RegistryClient(registry.host, plain_http=False, insecure=True) as client:
        client.ping()
        assert client.scheme == "http"


def test_loopback_detection() -> None:
    assert is_loopback("localhost:5000") and is_loopback("127.0.0.1") and is_loopback("[::1]:80")
    assert is_loopback("127.0.0.2:5000")
    assert not is_loopback("registry.example:5000") and not is_loopback("10.0.0.1")


def test_pull_of_unknown_tag_through_path(registry: Registry, tmp_path: Path) -> None:
    with registry.client() as client, pytest.raises(NotFound, match="no image"):
        pull_image(client, parse(f"{registry.host}/vm:missing"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
