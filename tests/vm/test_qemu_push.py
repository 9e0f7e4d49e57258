"""`shoal vm push` and `shoal vm commit` on real QEMU and the real docker-registry: a file
written in a running VM travels in its disk (the guest is paused while the node reads it, then
runs on), a second push of the barely changed disk uploads almost nothing, and the committed
Image boots a new VM that has the file."""

import shutil

import pytest

from helpers import wait_until
from images.image_helpers import Registry
from images.registry_fixtures import isolated_credentials, registry
from qemu_dev import TEST_IMAGE, QemuDev
from shoal.testguest import TestGuest

__all__ = ["isolated_credentials", "registry"]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "ssh")),
    reason="needs qemu-system-x86_64, qemu-img and the OpenSSH client (make system-deps)",
)

BOOT_TIMEOUT = 300
VM_FLAGS = ["--cpu", "1", "--memory", "256Mi", "--disk", "1Gi"]


@pytest.fixture
def two_nodes(qemu_dev: QemuDev) -> QemuDev:
    """shoal dev with two qemu nodes (each its own state dir and image cache)."""
    qemu_dev.kill()
    qemu_dev.nodes = 2
    qemu_dev.start()
    wait_until(lambda: len(qemu_dev.cli.json("node", "list")["items"]) == 2, what="two nodes")
    return qemu_dev


def test_push_a_vm_then_boot_its_image_with_the_file_in_it(
    two_nodes: QemuDev, registry: Registry, guest_image: TestGuest
) -> None:
    cli = two_nodes.cli
    key = ["-i", str(guest_image.private_key)]
    cli.run("vm", "deploy", "src", "--image", TEST_IMAGE, *VM_FLAGS, "--wait", timeout=BOOT_TIMEOUT)
    cli.run("ssh", "src", *key, "--", "echo pushed-$((6 * 7)) > /root/mark && sync")

    reference = f"{registry.host}/built:1"
    pushed = cli.run("vm", "push", "src", reference, "--insecure", timeout=600)
    assert f"pushed src to {registry.host}/built" in pushed.stdout
    assert "digest: sha256:" in pushed.stdout
    # The guest was paused while its disk was read, and runs on.
    assert cli.json("vm", "get", "src")["status"]["phase"] == "Running"
    assert cli.run("ssh", "src", *key, "--", "cat /root/mark").stdout.strip() == "pushed-42"

    again = cli.run("vm", "push", "src", reference, "--insecure", timeout=600)
    uploaded = int(again.stdout.split("(")[1].split(" blobs uploaded")[0])
    # Only what changed since (the guest keeps running and writes a little) is sent again.
    assert uploaded <= 3, again.stdout

    # commit: the disk as it is now becomes an Image (stored in the registry, pinned by
    # digest), which a new VM boots, file included.
    committed = cli.run(
        "vm", "commit", "src", "--name", "snap", "--to", f"{registry.host}/snap:1", "--insecure",
        timeout=600,
    )  # fmt: skip
    assert "image snap created from" in committed.stdout
    source = cli.json("image", "get", "snap")["spec"]["source"]["oci"]
    assert source.startswith(f"{registry.host}/snap") and "@sha256:" in source
    # On the other node, which has never seen the VM nor its image: it pulls it.
    source_node = cli.json("vm", "get", "src")["spec"]["nodeName"]
    other = next(n["metadata"]["name"] for n in cli.json("node", "list")["items"]
                 if n["metadata"]["name"] != source_node)  # fmt: skip
    cli.run("node", "label", other, "role=copy")
    cli.run(
        "vm", "deploy", "copy", "--image", "snap", *VM_FLAGS, "--selector", "role=copy", "--wait",
        timeout=BOOT_TIMEOUT,
    )  # fmt: skip
    assert cli.json("vm", "get", "copy")["spec"]["nodeName"] == other
    assert cli.run("ssh", "copy", *key, "--", "cat /root/mark").stdout.strip() == "pushed-42"

    refused = cli.run("vm", "push", "src", "not a reference", check=False)
    assert refused.returncode == 1 and "error:" in refused.stderr
    for name in ("src", "copy"):
        cli.run("vm", "delete", name, "--wait", timeout=120)
