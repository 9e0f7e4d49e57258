"""VMs from OCI images, on the real docker-registry and real QEMU.

- The node side without a guest boot: the qemu backend's image cache pulls one image once for
  two VMs, pins it while they exist (and again after a restart), makes each VM's overlay on the
  cached raw disk, and a pull that fails leaves the VM Failed (ImagePullFailed) with nothing
  partial in the cache.
- End to end on `shoal dev --backend qemu`: import the test guest, `shoal image push` it,
  delete it, `shoal image pull` it back as another Image, boot a VM of it (its progress shows
  while a slow registry serves it) and SSH in; a VM naming the reference directly boots from the
  cache; the Node lists what it caches; a deleted or unknown tag fails a VM with ImagePullFailed.
- A registry with htpasswd auth: `shoal registry login` (a wrong password is a clear error),
  then push, pull, and a node's pull with the saved login; `shoal registry logout`.
"""

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import Fatal, wait_until
from images.image_helpers import PASSWORD, USER, CutProxy, Registry, push_small_image
from images.registry_fixtures import htpasswd_registry, isolated_credentials, registry
from qemu_dev import TEST_IMAGE, QemuDev
from shoal.backends.base import Actual, BackendError
from shoal.backends.qemu import QemuBackend, QemuSettings
from shoal.backends.qemu.images import PULL_FAILED, NodeImages
from shoal.backends.qemu.machine import Machine
from shoal.client import Client
from shoal.images.oci import OCI_CONFIG, OCI_MANIFEST
from shoal.testguest import TestGuest

__all__ = ["htpasswd_registry", "isolated_credentials", "registry"]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "ssh")),
    reason="needs qemu-system-x86_64, qemu-img and the OpenSSH client (make system-deps)",
)

MI = 2**20
BOOT_TIMEOUT = 300
VM_FLAGS = ["--cpu", "1", "--memory", "256Mi", "--disk", "1Gi"]


# -- helpers -----------------------------------------------------------------------------------


def blob_gets(registry: Registry, repository: str) -> int:
    return sum(
        1
        for a in registry.accesses()
        if a.method == "GET" and a.path.startswith(f"/v2/{repository}/blobs/") and a.status < 300
    )


def spec_of(image: str, resolved: dict[str, Any]) -> dict[str, Any]:
    return {
        "image": image,
        "cpu": 1,
        "memory": "256Mi",
        "disk": "1Gi",
        "os": "linux",
        "ports": [],
        "resolvedImage": resolved,
    }


def api(dev: QemuDev) -> Client:
    """A client of dev's API (faster than a CLI process when polling)."""
    token = (dev.data_dir / "admin.token").read_text().strip()
    return Client(f"http://127.0.0.1:{dev.port}", token)


def cache_dir(dev: QemuDev) -> Path:
    return dev.data_dir / "agents" / "dev-1" / "qemu" / "images" / "images"


# -- the node side -----------------------------------------------------------------------------


def test_two_vms_pull_one_image_once_and_pin_it_while_they_exist(
    registry: Registry, tmp_path: Path
) -> None:
    reference, digest = push_small_image(registry, tmp_path)
    images = NodeImages(tmp_path / "images")
    seen: list[str] = []

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                images.pull("vm-a", reference, seen.append),
                images.pull("vm-b", reference, seen.append),
            )
        )

    first, second = asyncio.run(both())
    assert first.digest == second.digest == digest
    # one pull: each chunk fetched once (the config twice: the cache sizes the pull first)
    assert blob_gets(registry, "small") == 4
    assert seen and seen[-1].startswith(f"pulling {reference}: 100% of ")
    assert images.cache.is_pinned(digest)
    assert reference in images.held() and f"{registry.host}/small@{digest}" in images.held()

    images.unpin("vm-a")
    images.unpin("vm-a")  # twice is harmless
    assert images.cache.is_pinned(digest)
    images.unpin("vm-b")
    assert not images.cache.is_pinned(digest)
    assert images.cache.evict(0) == [digest]
    assert images.held() == []


def test_backend_makes_the_overlay_on_the_cached_disk_and_pins_it_across_restarts(
    registry: Registry, tmp_path: Path
) -> None:
    reference, digest = push_small_image(registry, tmp_path)
    settings = QemuSettings(state_dir=tmp_path / "node", accelerator="tcg")

    async def scenario() -> None:
        backend = QemuBackend(settings)
        # named directly by its reference: the config's metadata stands in for an Image's
        await backend.create("vm-1", spec_of(reference, {"source": {"oci": reference}}))
        machine = Machine.load(settings.state_dir / "vms" / "vm-1")
        cached = backend.images.cache.get(digest)
        assert cached is not None and machine.image_digest == digest
        assert machine.base == str(cached.disk) and machine.ssh_user == "builder"
        assert (machine.boot, machine.firmware, machine.kernel) == ("disk", "bios", None)
        info = json.loads(
            subprocess.run(
                [
                    "qemu-img",
                    "info",
                    "--output=json",
                    "-U",
                    str(settings.state_dir / "vms" / "vm-1" / "disk.qcow2"),
                ],
                capture_output=True,
                check=True,
                text=True,
            ).stdout
        )
        assert info["backing-filename-format"] == "raw"
        assert info["virtual-size"] == 2**30, "grown to the VM's disk size"
        assert backend.images.cache.evict(0) == [], "a VM's image is never evicted"

        restarted = QemuBackend(settings)
        assert restarted.images.cache.is_pinned(digest)
        assert reference in restarted.cached_images()
        await restarted.delete("vm-1")
        assert not restarted.images.cache.is_pinned(digest)
        assert restarted.images.cache.evict(0) == [digest]

    asyncio.run(scenario())


def test_a_failed_pull_fails_the_vm_until_it_is_stopped_and_leaves_nothing_partial(
    registry: Registry, tmp_path: Path
) -> None:
    settings = QemuSettings(state_dir=tmp_path / "node", accelerator="tcg")
    reference = f"{registry.host}/small:nope"

    async def scenario() -> None:
        backend = QemuBackend(settings)
        with pytest.raises(BackendError, match="there is no image small:nope"):
            await backend.create("vm-1", spec_of(reference, {"source": {"oci": reference}}))
        state = await backend.status("vm-1")
        assert (state.actual, state.reason) == (Actual.FAILED, PULL_FAILED)
        assert state.message.startswith(f"pulling {reference} failed: ")
        await backend.stop("vm-1")
        assert (await backend.status("vm-1")).actual == Actual.ABSENT

        with pytest.raises(BackendError, match="cannot reach registry"):
            await backend.create("vm-2", spec_of("x", {"source": {"oci": "127.0.0.1:1/small:1"}}))
        await backend.delete("vm-2")
        assert (await backend.status("vm-2")).actual == Actual.ABSENT

    asyncio.run(scenario())
    images = settings.state_dir / "images" / "images"
    assert [p.name for p in images.iterdir() if not p.name.endswith(".lock")] == []


# -- end to end --------------------------------------------------------------------------------


def test_push_delete_pull_boot_from_the_cache_and_fail_on_a_missing_tag(
    qemu_dev: QemuDev, registry: Registry, guest_image: TestGuest
) -> None:
    dev, cli = qemu_dev, qemu_dev.cli
    pushed = cli.run("image", "push", TEST_IMAGE, f"{registry.host}/guest:1", timeout=300)
    assert "digest: sha256:" in pushed.stdout
    digest = pushed.stdout.split("digest: ")[1].strip()
    cli.run("image", "delete", TEST_IMAGE)

    # The node pulls through a slow proxy, so that the pull's progress can be watched.
    slow = CutProxy(registry.port, rate=1.5 * MI)
    client = api(dev)
    try:
        reference = f"{slow.host}/guest:1"
        image = cli.json("image", "pull", reference, "--name", "from-registry")
        assert image["spec"]["source"] == {"oci": reference}
        assert image["spec"]["boot"] == "kernel"
        assert image["spec"]["cmdline"] == guest_image.cmdline

        cli.run("vm", "deploy", "x", "--image", "from-registry", *VM_FLAGS)
        messages: list[tuple[str, str]] = []  # (phase, message) as they came

        def running() -> bool:
            status = client.get("virtualmachines", "x", "default").get("status") or {}
            seen = (status.get("phase", ""), status.get("message", ""))
            if seen[1] and seen not in messages:
                messages.append(seen)
            if status.get("phase") == "Failed":
                raise Fatal(f"x failed: {status}")
            return status.get("phase") == "Running"

        wait_until(running, timeout=BOOT_TIMEOUT, interval=0.1, what="x to run")
    finally:
        client.close()
        slow.close()
    progress = [(p, m) for p, m in messages if m.startswith(f"pulling {reference}: ")]
    assert progress and all(p == "Starting" and "% of " in m for p, m in progress), messages
    key = ["-i", str(guest_image.private_key)]
    uname = cli.run("ssh", "x", *key, "--", "uname", "-a", timeout=120)
    assert uname.stdout.startswith("Linux"), uname.stdout

    # Another name for the same image (the registry itself, not the proxy): same manifest digest,
    # so it boots from the cache, fetching no blob again.
    before = blob_gets(registry, "guest")
    direct = f"{registry.host}/guest:1"
    cli.run("vm", "deploy", "y", "--image", direct, *VM_FLAGS, "--wait", timeout=BOOT_TIMEOUT)
    assert blob_gets(registry, "guest") == before
    assert cli.run("ssh", "y", *key, "--", "true", timeout=120).returncode == 0

    def cached() -> bool:
        listed = set(cli.json("node", "get", "dev-1")["status"].get("cachedImages") or [])
        by_digest = {f"{ref.rsplit(':', 1)[0]}@{digest}" for ref in (reference, direct)}
        return {"from-registry", reference, direct, *by_digest} <= listed

    wait_until(cached, timeout=60, interval=1, what="the node to list its cached images")

    # The tag deleted from the registry, and a tag never pushed: both fail their VM.
    deleted = httpx.delete(f"http://{registry.host}/v2/guest/manifests/{digest}")
    assert deleted.status_code == 202, deleted.text
    entries = sorted(p.name for p in cache_dir(dev).iterdir())
    cli.run("vm", "deploy", "gone", "--image", direct, *VM_FLAGS)
    cli.run("vm", "deploy", "nope", "--image", f"{registry.host}/guest:nope", *VM_FLAGS)
    for name, tag in (("gone", "1"), ("nope", "nope")):

        def failed(name: str = name) -> dict[str, Any]:
            status: dict[str, Any] = cli.json("vm", "get", name)["status"]
            return status if status["phase"] == "Failed" else {}

        status = wait_until(failed, timeout=60, interval=0.5, what=f"{name} to fail")
        assert status["reason"] == "ImagePullFailed"
        assert f"there is no image guest:{tag} on {registry.host}" in status["message"]
    assert sorted(p.name for p in cache_dir(dev).iterdir()) == entries
    assert not list(cache_dir(dev).glob("*.partial"))


def test_htpasswd_registry_login_push_pull_and_a_node_pull(
    qemu_dev: QemuDev, htpasswd_registry: Registry
) -> None:
    cli, host = qemu_dev.cli, htpasswd_registry.host
    reference = f"{host}/guest:1"

    anonymous = cli.run("image", "push", TEST_IMAGE, reference, check=False)
    assert anonymous.returncode == 1
    assert anonymous.stderr.strip().startswith("error: ")
    assert f"run `shoal registry login {host}`" in anonymous.stderr
    assert len(anonymous.stderr.strip().splitlines()) == 1

    def login(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli.command(), "registry", "login", host, "-u", USER, "--password-stdin"],
            input=password + "\n",
            env=cli.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    wrong = login("not-the-password")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"error: registry {host} refused the login of user '{USER}': wrong user name or password"
    )
    right = login(PASSWORD)
    assert right.returncode == 0, right.stderr
    assert f"logged in to {host} as {USER}" in right.stdout

    cli.run("image", "push", TEST_IMAGE, reference, timeout=300)
    pulled = cli.run("image", "pull", reference, "--name", "private-guest")
    assert "image private-guest created from" in pulled.stdout

    # The node pulls with the same saved login (a VM created stopped: pulled, never booted).
    client = api(qemu_dev)
    try:
        client.create(
            "virtualmachines",
            {
                "apiVersion": "shoal.dev/v1",
                "kind": "VirtualMachine",
                "metadata": {"name": "cold"},
                "spec": {"image": "private-guest", "powerState": "Stopped", "cpu": 1},
            },
            "default",
        )
    finally:
        client.close()
    wait_until(
        lambda: cli.json("vm", "get", "cold")["status"]["phase"] == "Stopped",
        timeout=120,
        interval=0.5,
        what="the VM to be created from the private image",
    )

    assert cli.run("registry", "logout", host).stdout.strip() == f"logged out of {host}"
    again = cli.run("image", "pull", reference, check=False)
    assert again.returncode == 1 and "needs a login" in again.stderr


def test_cli_errors_are_one_clear_line(qemu_dev: QemuDev, registry: Registry) -> None:
    cli = qemu_dev.cli

    def error(*args: str) -> str:
        result = cli.run(*args, check=False)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]

    assert "cannot reach registry http://127.0.0.1:1" in error("image", "pull", "127.0.0.1:1/x:1")
    assert f"there is no image guest:9 on {registry.host}" in error(
        "image", "pull", f"{registry.host}/guest:9"
    )
    assert "no registry host" in error("image", "pull", "team/guest:1")

    # A container image whose layers are not tars: neither a shoal image nor a containerDisk.
    with registry.client() as client:
        config = client.upload_blob("plain", b"{}")
        layer = client.upload_blob("plain", b"not a tar")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 9}],
        }
        client.put_manifest("plain", "1", json.dumps(manifest).encode(), OCI_MANIFEST)
    assert "is neither a shoal image nor a containerDisk" in error(
        "image", "pull", f"{registry.host}/plain:1"
    )

    # Push needs an imported Image whose files are here.
    assert "no registry host" in error("image", "push", TEST_IMAGE, "guest:1")
    assert "--chunk-size 100Ki: chunk size" in error(
        "image", "push", TEST_IMAGE, f"{registry.host}/guest:1", "--chunk-size", "100Ki"
    )
    missing = {"path": "/nonexistent/disk.raw", "digest": "sha256:" + "0" * 64, "size": 1}
    client_ = api(qemu_dev)
    try:
        client_.create(
            "images",
            {
                "apiVersion": "shoal.dev/v1",
                "kind": "Image",
                "metadata": {"name": "elsewhere"},
                "spec": {"source": {"local": {"disk": missing}}},
            },
        )
        client_.create(
            "images",
            {
                "apiVersion": "shoal.dev/v1",
                "kind": "Image",
                "metadata": {"name": "remote"},
                "spec": {"source": {"oci": f"{registry.host}/guest:1"}},
            },
        )
    finally:
        client_.close()
    assert "its disk /nonexistent/disk.raw is not on this machine" in error(
        "image", "push", "elsewhere", f"{registry.host}/x:1"
    )
    assert "only an imported Image can be pushed" in error(
        "image", "push", "remote", f"{registry.host}/x:1"
    )
    assert "'just-a-name' is not a registry HOST[:PORT]" in error(
        "registry", "logout", "just-a-name"
    )
