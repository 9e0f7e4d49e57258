"""Real VMs through the CLI on `shoal dev --backend qemu`: the test guest boots, answers the real
OpenSSH client, goes through every power action, survives its agent being SIGKILLed (and is
adopted by the next one), and a QEMU killed under it makes it Failed with its console's last
lines. Nothing (process, state dir, socket link) outlives a deleted VM."""

import os
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from helpers import Cli, free_port, wait_until
from qemu_dev import TEST_IMAGE, QemuDev, guest_ssh, qemu_processes_under
from shoal.testguest import TestGuest

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "ssh")),
    reason="needs qemu-system-x86_64, qemu-img and the OpenSSH client (make system-deps)",
)

DEPLOY = ["--image", TEST_IMAGE, "--cpu", "1", "--memory", "256Mi", "--disk", "1Gi"]
BOOT_TIMEOUT = 300  # three TCG guests booting at once on two slow cores


def status(dev: QemuDev, name: str) -> dict[str, Any]:
    return dict(dev.cli.json("vm", "get", name)["status"])


def ssh(
    dev: QemuDev, guest: TestGuest, name: str, command: str
) -> subprocess.CompletedProcess[str]:
    port = next(p["host"] for p in status(dev, name)["ports"] if p["guest"] == 22)
    return guest_ssh(guest, port, command)


def test_three_vms_boot_answer_ssh_and_go_through_every_action(
    qemu_dev: QemuDev, guest_image: TestGuest
) -> None:
    dev = qemu_dev
    names = ["q1", "q2", "q3"]
    with ThreadPoolExecutor(3) as pool:
        list(
            pool.map(
                lambda n: dev.cli.run("vm", "deploy", n, *DEPLOY, "--wait", timeout=BOOT_TIMEOUT),
                names,
            )
        )
    ports = set()
    for name in names:
        vm = status(dev, name)
        assert vm["phase"] == "Running"
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in vm["conditions"])
        ports.add(vm["ports"][0]["host"])
        ran = ssh(dev, guest_image, name, "uname -sr; nproc; echo $((6*7))")
        assert ran.returncode == 0, ran.stderr
        assert "Linux" in ran.stdout and "\n1\n42" in ran.stdout
        assert ssh(dev, guest_image, name, "exit 7").returncode == 7
    assert len(ports) == 3, "every VM gets its own host port"

    # The serial console log comes from the node through the agent's tunnel channel.
    assert "ssh ready" in dev.cli.run("logs", "q2").stdout
    assert len(dev.cli.run("logs", "q2", "--tail-bytes", "40").stdout.encode()) <= 40
    follower = subprocess.Popen(
        [*dev.cli.command(), "logs", "q2", "-f", "--tail-bytes", "1"],
        env=dev.cli.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert ssh(dev, guest_image, "q2", "echo marker-$((40+2)) > /dev/ttyS0").returncode == 0
        seen = ""
        while "marker-42" not in seen:
            line = follower.stdout.readline() if follower.stdout else ""
            assert line, "the follower ended before the guest's line arrived"
            seen += line
    finally:
        follower.kill()
        follower.wait()
    assert len({d.name for d in dev.vm_state_dirs()}) == 3

    # Suspend pauses the guest (SSH stops answering); resume brings it back.
    dev.cli.run("vm", "suspend", "q1", "--wait")
    assert status(dev, "q1")["phase"] == "Suspended"
    dev.cli.run("vm", "resume", "q1", "--wait")
    assert ssh(dev, guest_image, "q1", "true").returncode == 0

    # Stop powers the guest down (ACPI), keeping its disk; start boots that same disk again.
    ssh(dev, guest_image, "q1", "echo kept > /root/marker; sync")
    dev.cli.run("vm", "stop", "q1", "--wait", timeout=120)
    assert status(dev, "q1")["phase"] == "Stopped"
    assert len(qemu_processes_under(dev.data_dir)) == 2
    dev.cli.run("vm", "start", "q1", "--wait", timeout=BOOT_TIMEOUT)
    assert ssh(dev, guest_image, "q1", "cat /root/marker").stdout.strip() == "kept"

    # Delete leaves nothing behind.
    dev.cli.run("vm", "delete", "q1", "q2", "q3", "--wait", timeout=120)
    wait_until(lambda: not qemu_processes_under(dev.data_dir), timeout=30, what="QEMUs gone")
    assert dev.vm_state_dirs() == []
    links = [Path("/tmp", p) for p in os.listdir("/tmp") if p.startswith("shoal-vm-")]
    assert not [p for p in links if str(dev.data_dir) in os.readlink(p)], "socket links left"


def test_agent_killed_then_restarted_adopts_its_vms_and_a_killed_qemu_fails_the_vm(
    qemu_dev: QemuDev, guest_image: TestGuest
) -> None:
    dev = qemu_dev
    dev.cli.run("vm", "deploy", "keep", *DEPLOY, "--wait", timeout=BOOT_TIMEOUT)
    before = status(dev, "keep")
    pids = qemu_processes_under(dev.data_dir)
    assert len(pids) == 1

    dev.kill()  # SIGKILL: controller and agent gone, QEMU lives on
    assert qemu_processes_under(dev.data_dir) == pids
    dev.start()
    wait_until(lambda: status(dev, "keep")["phase"] == "Running", timeout=60, what="adoption")
    after = status(dev, "keep")
    assert after["ports"] == before["ports"]
    assert qemu_processes_under(dev.data_dir) == pids, "adopted, not restarted"
    assert ssh(dev, guest_image, "keep", "echo still here").stdout.strip() == "still here"

    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: status(dev, "keep")["phase"] == "Failed", timeout=60, what="Failed")
    failed = status(dev, "keep")
    assert failed["reason"] == "QemuExited"
    assert "QEMU exited unexpectedly" in failed["message"]
    last_line = dev.cli.run("logs", "keep").stdout.strip().splitlines()[-1]
    assert last_line.strip() in failed["message"], "the console's last lines are in the message"

    dev.cli.run("vm", "delete", "keep", "--wait", timeout=120)
    assert dev.vm_state_dirs() == []


def test_shoal_dev_auto_boots_the_test_guest_to_ssh_every_time(
    tmp_path: Path, guest_image: TestGuest
) -> None:
    """`make run` is `shoal dev --backend auto`. On this kind of machine /dev/kvm exists, yet KVM
    runs guests far slower than emulation (backends/qemu/accel.py): whatever each fresh process
    decides, the banner, the node and `shoal node get` agree on it and say why, and the guest
    boots and answers SSH. Three times, each process deciding afresh."""
    for attempt in range(3):
        base = tmp_path / f"run-{attempt}"
        base.mkdir()
        env = {**os.environ, "SHOAL_CONFIG": str(base / "config.yaml")}
        dev = QemuDev(base, Cli(env), free_port(), backend=("--backend", "auto"))
        try:
            dev.start()
            node = dev.cli.json("node", "list")["items"][0]
            accelerator, why = node["status"]["accelerator"], node["status"]["acceleratorReason"]
            assert node["status"]["backend"] == "qemu" and accelerator and why
            banner = f"backend: qemu with the {accelerator} accelerator ({why})"
            assert banner in dev.log.read_text()
            works = next(c for c in node["status"]["conditions"] if c["type"] == "AcceleratorWorks")
            assert (works["status"], works["message"]) == ("True", why)
            shown = dev.cli.run("node", "get", node["metadata"]["name"]).stdout
            assert f"{accelerator} ({why})" in shown

            dev.cli.run("vm", "deploy", "g", *DEPLOY, "--wait", timeout=BOOT_TIMEOUT)
            answered = ssh(dev, guest_image, "g", "echo hello from $(hostname)")
            assert answered.returncode == 0, answered.stderr
            assert answered.stdout.startswith("hello from ")
            dev.cli.run("vm", "delete", "g", "--wait", timeout=120)
            assert dev.vm_state_dirs() == []
        finally:
            dev.tear_down()
