"""`shoal dev --backend qemu` in a process of its own, for tests on real QEMU guests (tests/vm,
tests/e2e), torn down with every QEMU it started."""

import contextlib
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers import SHOAL, Cli, kill_group, wait_until
from shoal.client import Client
from shoal.testguest import TestGuest

TEST_IMAGE = "test-guest"


def guest_ssh(
    guest: TestGuest, port: int, command: str, address: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """command run in the test guest over SSH (its key), at address:port."""
    return subprocess.run(
        ["ssh", *guest.ssh_options(), "-p", str(port), f"{guest.ssh_user}@{address}", command],
        capture_output=True,
        text=True,
        timeout=60,
    )


def qemu_pids(vm_ids: list[str]) -> list[int]:
    """Pids of QEMUs running for any of vm_ids."""
    marks = [f"shoal-{vm_id}".encode() for vm_id in vm_ids]
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            if b"qemu-system" in cmdline and any(mark in cmdline for mark in marks):
                pids.append(int(proc.name))
    return pids


def qemu_processes_under(data_dir: Path) -> list[int]:
    """Pids of QEMUs started for VMs whose state lives under data_dir."""
    return qemu_pids(
        [path.parent.name for path in data_dir.glob("agents/*/qemu/vms/*/machine.json")]
    )


@dataclass
class QemuDev:
    """`shoal dev --backend qemu` in a process of its own, and the CLI pointed at it."""

    base: Path
    cli: Cli
    port: int
    process: subprocess.Popen[bytes] | None = None
    nodes: int = 1
    # These tests are about VMs, not about choosing an accelerator (that has tests of its own):
    # never let how this host's KVM behaves decide them.
    backend: tuple[str, ...] = ("--backend", "qemu", "--accel", "tcg")
    # Three one-vCPU guests on a two-core CI machine: offer 4 vCPUs (and 8 VMs) per node.
    node_cpu: int = 4
    max_vms: int = 8

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "dev.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    SHOAL,
                    "dev",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    *self.backend,
                    "--node-cpu",
                    str(self.node_cpu),
                    "--max-vms",
                    str(self.max_vms),
                    "--nodes",
                    str(self.nodes),
                ],
                env=self.cli.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{self.port}/readyz").status_code == 200,
            timeout=90,
            what="shoal dev to serve",
        )
        wait_until(
            lambda: "Ready" in self.cli.run("node", "list").stdout, timeout=60, what="the node"
        )

    def kill(self) -> None:
        """SIGKILL, as a crash would: the VMs' QEMUs live on."""
        if self.process is not None:
            kill_group(self.process)
            self.process = None

    def tear_down(self) -> None:
        """Kill shoal dev and every QEMU it started, and unlink their sockets' short links."""
        self.kill()
        for pid in qemu_processes_under(self.data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not qemu_processes_under(self.data_dir), timeout=20, what="QEMUs to exit"
        )
        for link in Path(tempfile.gettempdir()).glob("shoal-vm-*"):
            with contextlib.suppress(OSError):
                if str(self.data_dir) in os.readlink(link):
                    link.unlink()

    def api(self) -> Client:
        """The HTTP API as the admin, for what the CLI does not do."""
        token = (self.data_dir / "admin.token").read_text().strip()
        return Client(f"http://127.0.0.1:{self.port}", token)

    def guest_key_secret(self, guest: TestGuest, name: str = "guest-key") -> None:
        """An ssh-auth Secret with the test guest's key: VMs given it (--access-secret) get
        exec and startup scripts."""
        self.cli.run(
            "secret", "create", "ssh", name,
            "--user", guest.ssh_user, "--private-key", str(guest.private_key),
        )  # fmt: skip

    def vm_state_dirs(self) -> list[Path]:
        return list(self.data_dir.glob("agents/*/qemu/vms/*"))


def import_test_image(dev: QemuDev, guest_image: TestGuest) -> None:
    """shoal dev registers the built test guest itself; importing it again must agree."""
    imported = dev.cli.run(
        "image", "import", str(guest_image.disk),
        "--name", TEST_IMAGE,
        "--boot", "kernel",
        "--kernel", str(guest_image.kernel),
        "--initrd", str(guest_image.initrd),
        "--cmdline", guest_image.cmdline,
        "--ssh-user", guest_image.ssh_user,
        check=False,
    )  # fmt: skip
    assert imported.returncode == 0 or "already exists" in imported.stderr, imported.stderr
