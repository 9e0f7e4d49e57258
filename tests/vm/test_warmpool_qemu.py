"""Warm pools on real QEMU guests under `shoal dev`: a burst of deploys served from a pool and
cold, each VM with its own port, hostname and MAC; saved entries that outlive an agent restart;
clones of one golden with their own entropy and host keys; a corrupted state that boots cold and
says why; pools deleted with their files."""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from helpers import Cli, free_port, wait_until
from qemu_dev import TEST_IMAGE, QemuDev, guest_ssh
from shoal.backends.qemu.machine import mac_address
from shoal.client import Client
from shoal.model.meta import get_condition
from shoal.testguest import TestGuest
from shoal.warmpool.entries import CLAIM_ENTRY_ANNOTATION

pytestmark = [
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img")),
        reason="needs qemu-system-x86_64 and qemu-img (make system-deps)",
    ),
    pytest.mark.slow,
]
Obj = dict[str, Any]
POOL_LABEL = "warmpools.shoal.dev/pool"
BOOT_TIMEOUT = 600


@pytest.fixture
def dev(tmp_path: Path, guest_image: TestGuest) -> Iterator[QemuDev]:
    env = {**os.environ, "SHOAL_CONFIG": str(tmp_path / "config.yaml")}
    qemu = QemuDev(tmp_path, Cli(env), free_port(), node_cpu=16, max_vms=16)
    qemu.start()
    try:
        qemu.guest_key_secret(guest_image)
        yield qemu
    finally:
        qemu.tear_down()


def config(client: Client, name: str) -> None:
    spec = {
        "image": TEST_IMAGE,
        "cpu": 1,
        "memory": "256Mi",
        "disk": "1Gi",
        "access": {"secretRef": {"name": "guest-key"}},
    }
    client.create("vmconfigs", {"metadata": {"name": name}, "spec": spec}, "default")


def pool_ready(client: Client, name: str, size: int) -> Obj | None:
    status = client.get("warmpools", name, "default").get("status") or {}
    return status if status.get("ready") == size and status.get("refilling") == 0 else None


def entries(client: Client, pool: str) -> dict[str, Obj]:
    return {
        vm["metadata"]["uid"]: vm
        for vm in client.list_all("virtualmachines", "default")
        if (vm["metadata"].get("labels") or {}).get(POOL_LABEL) == pool
    }


def ready_vm(client: Client, name: str) -> Obj | None:
    vm = client.get("virtualmachines", name, "default")
    condition = get_condition(vm, "Ready")
    return vm if condition and condition["status"] == "True" else None


def ssh_port(vm: Obj) -> int:
    return next(p["host"] for p in vm["status"]["ports"] if p["guest"] == 22)


def in_guest(guest: TestGuest, vm: Obj, command: str) -> str:
    done = guest_ssh(guest, ssh_port(vm), command)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def events_of(client: Client, name: str) -> list[tuple[str, str, str]]:
    return [
        (e["reason"], e["type"], e["message"])
        for e in client.list_all("events", "default")
        if e["involvedObject"]["name"] == name
    ]


def saved_dirs(dev: QemuDev) -> set[str]:
    return {path.parent.name for path in dev.data_dir.glob("agents/*/qemu/saved/*/entry.json")}


def deploy(client: Client, name: str, config_name: str) -> None:
    body = {"metadata": {"name": name}, "spec": {"config": config_name}}
    client.create("virtualmachines", body, "default")


def test_a_pool_of_three_serves_a_burst_of_ten_and_refills(
    dev: QemuDev, guest_image: TestGuest
) -> None:
    client = dev.api()
    config(client, "ci")
    client.create(
        "warmpools", {"metadata": {"name": "ci"}, "spec": {"config": "ci", "size": 3}}, "default"
    )
    wait_until(lambda: pool_ready(client, "ci", 3), timeout=BOOT_TIMEOUT, what="3 saved entries")
    saved = entries(client, "ci")
    assert saved_dirs(dev) == set(saved)

    # An agent restart keeps its saved entries (shoal dev runs the agent: restart it all).
    dev.kill()
    dev.start()
    wait_until(lambda: pool_ready(client, "ci", 3), timeout=60, what="the entries after restart")
    assert set(entries(client, "ci")) == set(saved) and saved_dirs(dev) == set(saved)

    names = [f"job-{i}" for i in range(10)]
    with ThreadPoolExecutor(max_workers=10) as threads:
        list(threads.map(lambda name: deploy(client, name, "ci"), names))
    vms = {
        name: wait_until(
            lambda name=name: ready_vm(client, name), timeout=BOOT_TIMEOUT, what=f"{name} Ready"
        )
        for name in names
    }
    resumed = {
        n for n, vm in vms.items() if CLAIM_ENTRY_ANNOTATION in vm["metadata"]["annotations"]
    }
    assert len(resumed) == 3, "3 served from the pool, 7 cold"
    assert {vms[n]["metadata"]["annotations"][CLAIM_ENTRY_ANNOTATION] for n in resumed} == set(
        saved
    )
    ports = {ssh_port(vm) for vm in vms.values()}
    assert len(ports) == 10, "each VM on its own host port"
    for name, vm in vms.items():
        identity = get_condition(vm, "FreshIdentity")
        assert identity is not None and identity["reason"] == "Refreshed", identity
        assert in_guest(guest_image, vm, "hostname") == name
        if name in resumed:
            assert ("WarmStarted", "Normal", "resumed a saved entry of warm pool ci") in events_of(
                client, name
            )
            address = in_guest(guest_image, vm, "cat /sys/class/net/eth0/address")
            assert address == mac_address(vm["metadata"]["uid"]), "the VM's own MAC"
    wait_until(lambda: pool_ready(client, "ci", 3), timeout=BOOT_TIMEOUT, what="the pool refilled")
    refilled = entries(client, "ci")
    assert not set(refilled) & set(saved)
    wait_until(lambda: saved_dirs(dev) == set(refilled), what="only the new entries' files")

    # A corrupted state file: the claim boots cold, and an Event says why.
    for uid in refilled:
        (state,) = dev.data_dir.glob(f"agents/*/qemu/saved/{uid}/state")
        with state.open("r+b") as file:
            file.seek(state.stat().st_size // 2)
            file.write(bytes(4096))
    deploy(client, "after-corruption", "ci")
    vm = wait_until(
        lambda: ready_vm(client, "after-corruption"), timeout=BOOT_TIMEOUT, what="the cold VM"
    )
    assert CLAIM_ENTRY_ANNOTATION in vm["metadata"]["annotations"]
    failed = [e for e in events_of(client, "after-corruption") if e[0] == "WarmStartFailed"]
    assert failed and failed[0][1] == "Warning"
    assert "its state file is corrupted (its sha256 differs)" in failed[0][2], failed
    assert in_guest(guest_image, vm, "hostname") == "after-corruption"

    # The pool deleted: its entries and their files go; the VMs it served stay.
    client.delete("warmpools", "ci", "default")
    wait_until(lambda: not entries(client, "ci") and not saved_dirs(dev), what="entries gone")
    assert ready_vm(client, "job-0")


def test_clones_of_one_golden_get_their_own_entropy_and_host_keys(
    dev: QemuDev, guest_image: TestGuest
) -> None:
    client = dev.api()
    config(client, "gold")
    client.create(
        "warmpools",
        {"metadata": {"name": "gold"}, "spec": {"config": "gold", "mode": "clone", "size": 1}},
        "default",
    )
    wait_until(lambda: pool_ready(client, "gold", 1), timeout=BOOT_TIMEOUT, what="the golden")
    (golden,) = entries(client, "gold")
    for name in ("clone-a", "clone-b"):
        deploy(client, name, "gold")
    clones = [
        wait_until(lambda n=n: ready_vm(client, n), timeout=BOOT_TIMEOUT, what=f"{n} Ready")
        for n in ("clone-a", "clone-b")
    ]
    for clone in clones:
        assert clone["metadata"]["annotations"][CLAIM_ENTRY_ANNOTATION] == golden
        assert get_condition(clone, "FreshIdentity")["reason"] == "Refreshed"
    assert set(entries(client, "gold")) == {golden}, "a golden stays for the next clone"

    random = [in_guest(guest_image, c, "head -c 32 /dev/urandom | od -An -tx1") for c in clones]
    assert random[0] != random[1], "clones of one memory image must not share their entropy"
    keys = [host_key(ssh_port(c)) for c in clones]
    assert keys[0] != keys[1], "each clone has its own SSH host key"
    names = [in_guest(guest_image, c, "hostname") for c in clones]
    assert names == ["clone-a", "clone-b"]

    # The pool deleted while clones map its golden: the golden (object, reservation and files)
    # stays until the last clone goes, then the pool and its golden go.
    client.delete("warmpools", "gold", "default")
    time.sleep(5)
    assert set(entries(client, "gold")) == {golden} and saved_dirs(dev) == {golden}
    assert entries(client, "gold")[golden]["metadata"].get("deletionTimestamp")
    assert in_guest(guest_image, clones[0], "hostname") == "clone-a"
    for name in ("clone-a", "clone-b"):
        client.delete("virtualmachines", name, "default")
    wait_until(
        lambda: not entries(client, "gold") and not saved_dirs(dev),
        timeout=60,
        what="the golden and its files gone",
    )
    assert not [
        p for p in client.list_all("warmpools", "default") if p["metadata"]["name"] == "gold"
    ]


def host_key(port: int) -> str:
    """The SSH host key the server at port offers (ssh-keyscan)."""
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    keys = sorted(line.split(None, 1)[1] for line in scanned.stdout.splitlines() if line.strip())
    assert keys, scanned.stderr
    return "\n".join(keys)
