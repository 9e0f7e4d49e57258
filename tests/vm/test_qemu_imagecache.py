"""Pre-caching on a real node (`shoal dev --backend qemu`) from the real docker-registry:
`shoal image cache add --wait` follows the node's pull to Ready, the Node then lists the image,
and an image that cannot be pulled fails the ImageCache with the registry's reason."""

import shutil
from pathlib import Path

import pytest

from images.image_helpers import Registry, push_small_image
from images.registry_fixtures import isolated_credentials, registry
from qemu_dev import QemuDev

__all__ = ["isolated_credentials", "registry"]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img")),
    reason="needs qemu-system-x86_64 and qemu-img (make system-deps)",
)


def test_image_cache_add_pulls_onto_the_node_and_reports_failures(
    qemu_dev: QemuDev, registry: Registry, tmp_path: Path
) -> None:
    cli = qemu_dev.cli
    reference, _ = push_small_image(registry, tmp_path)
    added = cli.run("image", "cache", "add", reference, "--name", "small", "--all", "--wait")
    assert "image cache small: 1/1 nodes ready" in added.stdout, added.stdout
    node = cli.json("node", "list")["items"][0]
    assert reference in node["status"]["cachedImages"]
    shown = cli.json("image", "cache", "get", "small")["status"]
    assert shown["ready"] == shown["desired"] == 1
    assert next(iter(shown["nodes"].values()))["state"] == "Ready"
    assert "small" in cli.run("image", "cache", "list").stdout

    missing = f"{registry.host}/small:nope"
    failed = cli.run(
        "image", "cache", "add", missing, "--name", "nope", "--all", "--wait", "--timeout", "120",
        check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "image cache nope failed on" in failed.stderr and "nope" in failed.stderr
    refused = cli.run("image", "cache", "add", reference, "--all", "--nodes", "x", check=False)
    assert refused.returncode == 1 and "exactly one of" in refused.stderr
    cli.run("image", "cache", "delete", "small", "nope")
