"""`shoal run` on real guests: one job in a fresh VM, files in and out, the job's exit code, and
no VM left behind whether the job ends, fails to boot, is interrupted or is killed outright (the
lease the controller's garbage collector enforces)."""

import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import SHOAL, wait_until
from qemu_dev import TEST_IMAGE, QemuDev
from shoal.testguest import TestGuest

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img")),
    reason="needs qemu-system-x86_64 and qemu-img (make system-deps)",
)

VM = ["--image", TEST_IMAGE, "--cpu", "1", "--memory", "256Mi", "--access-secret", "guest-key"]
EXIT_INFRA = 125
EXIT_INTERRUPTED = 130


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vm_names(dev: QemuDev) -> list[str]:
    return [vm["metadata"]["name"] for vm in dev.cli.json("vm", "list")["items"]]


def running_vms(dev: QemuDev) -> list[str]:
    items = dev.cli.json("vm", "list")["items"]
    return [
        vm["metadata"]["name"] for vm in items if (vm.get("status") or {}).get("phase") == "Running"
    ]


def test_shoal_run_runs_one_job_and_leaves_nothing_behind(
    qemu_dev: QemuDev, guest_image: TestGuest, tmp_path: Path
) -> None:
    dev = qemu_dev
    dev.guest_key_secret(guest_image)
    payload = tmp_path / "in.bin"
    payload.write_bytes(os.urandom(2 * 2**20))
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("alpha\n")
    job = (
        "cd /root/work && sha256sum in.bin > tree/sum && cp in.bin out.bin && "
        "echo made > tree/sub/b.txt && echo to-stdout && echo to-stderr >&2 && exit 5"
    )
    ran = subprocess.run(
        [
            SHOAL, "run", *VM,
            "--copy-in", f"{payload}:/root/work/in.bin",
            "--copy-in", f"{tree}:/root/work/tree",
            "--copy-out", f"/root/work/out.bin:{tmp_path / 'out.bin'}",
            "--copy-out", f"/root/work/tree:{tmp_path / 'tree-back'}",
            "--", "sh", "-c", job,
        ],
        capture_output=True,
        env=dev.cli.env,
        timeout=600,
    )  # fmt: skip
    assert ran.returncode == 5, ran.stderr
    assert ran.stdout == b"to-stdout\n"
    assert b"to-stderr\n" in ran.stderr
    assert digest(tmp_path / "out.bin") == digest(payload)  # in, and out again, unchanged
    back = tmp_path / "tree-back"
    assert (back / "sub" / "a.txt").read_text() == "alpha\n"
    assert (back / "sub" / "b.txt").read_text() == "made\n"
    assert (back / "sum").read_text().split()[0] == digest(payload)
    wait_until(lambda: vm_names(dev) == [], timeout=120, what="the job's VM to go")

    # A VM that cannot boot: the infrastructure's exit code, and no VM left.
    api = dev.api()
    missing = {"path": "/nonexistent/disk.qcow2", "digest": "sha256:" + "0" * 64, "size": 1}
    api.create(
        "images", {"metadata": {"name": "broken"}, "spec": {"source": {"local": {"disk": missing}}}}
    )
    broken = subprocess.run(
        [SHOAL, "run", "--image", "broken", "--access-secret", "guest-key", "--", "true"],
        capture_output=True,
        env=dev.cli.env,
        timeout=300,
    )
    assert broken.returncode == EXIT_INFRA, broken.stderr
    assert b"did not come up" in broken.stderr and b"is not on this node" in broken.stderr
    wait_until(lambda: vm_names(dev) == [], timeout=120, what="the broken VM to go")

    # Ctrl-C mid-job: the VM is deleted at once; SIGKILL: the lease runs out and the GC deletes it.
    for sig, code in ((signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGKILL, -signal.SIGKILL)):
        said = tmp_path / f"run-{sig.name}.log"
        with said.open("wb") as stderr:
            process = subprocess.Popen(
                [SHOAL, "run", *VM, "--lease", "10", "--", "sleep", "600"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=dev.cli.env,
            )
        try:
            wait_until(lambda: running_vms(dev) != [], timeout=300, what="the job's VM to run")
            process.send_signal(sig)
            assert process.wait(timeout=60) == code, said.read_text()
        finally:
            if process.poll() is None:
                process.kill()
        wait_until(lambda: vm_names(dev) == [], timeout=120, what=f"the VM to go after {sig.name}")
    events = dev.cli.run("events", "-o", "json").stdout
    assert "LeaseExpired" in events
