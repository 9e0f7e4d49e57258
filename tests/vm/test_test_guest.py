"""The project's test guest, booted for real under QEMU (TCG) and driven with OpenSSH.

The guest is built once per session (and cached across sessions, see docs/test-guest.md); one
boot serves the tests of this module, in order, the last one powering it off over QMP.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.testguest import READY_LINE, TestGuest, build_test_guest, free_port

BOOT_TIMEOUT = 120.0  # CI machines without KVM are slow
POWEROFF_TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "ssh", "scp")),
    reason="needs qemu-system-x86_64, qemu-img and the OpenSSH client (make system-deps)",
)


class Guest:
    """One running QEMU of the test guest: serial console in a file, sshd on a local port."""

    def __init__(self, image: TestGuest, workdir: Path, sockdir: Path) -> None:
        self.image = image
        self.workdir = workdir
        self.port = free_port()
        self.console = workdir / "console.log"
        self.qmp_socket = sockdir / "qmp.sock"
        overlay = image.create_overlay(workdir / "overlay.qcow2")
        argv = image.qemu_command(
            overlay,
            ssh_port=self.port,
            accel="tcg",
            serial=f"file:{self.console}",
            qmp_socket=self.qmp_socket,
        )
        self._qemu_log = (workdir / "qemu.log").open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._qemu_log, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._qemu_log.close()

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            text = ""
        qemu = (self.workdir / "qemu.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) + (f"\n[qemu] {qemu}" if qemu else "")

    def wait_for_ssh(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Seconds from QEMU's start to an SSH banner on the forwarded port.

        Connections are tried once the guest says sshd listens (or after 30 s without that
        line): one made earlier is held by QEMU's user-mode network, retrying its SYN to the
        guest for seconds, and would only slow the wait down.
        """
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"QEMU exited ({self.proc.returncode}):\n{self.console_tail()}")
            try_now = self._console_says_ready() or time.monotonic() - self.started > 30
            if try_now and _banner(self.port).startswith(b"SSH-2.0-"):
                return time.monotonic() - self.started
            time.sleep(0.1)
        pytest.fail(f"no SSH banner within {timeout:.0f}s:\n{self.console_tail()}")

    def _console_says_ready(self) -> bool:
        try:
            return READY_LINE in self.console.read_text(errors="replace")
        except FileNotFoundError:
            return False

    def ssh(
        self, command: str, *, check: bool = True, tty: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *self._options(), "-p", str(self.port), f"{self.image.ssh_user}@127.0.0.1"]
        if tty:
            argv.insert(1, "-tt")  # force a pty: the guest needs devpts for it
        result = subprocess.run([*argv, command], capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, f"ssh {command!r}: {result.stderr}"
        return result

    def scp(self, *args: str) -> None:
        argv = ["scp", *self._options(), "-P", str(self.port), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"

    def remote(self, path: str) -> str:
        return f"{self.image.ssh_user}@127.0.0.1:{path}"

    def qmp(self, command: str) -> dict[str, Any]:
        """Run one QMP command (after the capabilities handshake) and return its reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.qmp_socket))
            stream = sock.makefile("rwb")
            greeting = json.loads(stream.readline())
            assert "QMP" in greeting, greeting
            for execute in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": execute}).encode() + b"\n")
                stream.flush()
                while True:  # skip asynchronous events until the reply
                    reply: dict[str, Any] = json.loads(stream.readline())
                    if "return" in reply or "error" in reply:
                        break
                assert "return" in reply, reply
            return reply

    def _options(self) -> list[str]:
        return [*self.image.ssh_options(), "-o", "BatchMode=yes", "-o", "ConnectTimeout=60"]


def _banner(port: int) -> bytes:
    """The first line the forwarded port sends, or b"" if it closes or stays silent."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(10)
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return b""


@pytest.fixture(scope="module")
def guest(guest_image: TestGuest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    workdir = tmp_path_factory.mktemp("test-guest")
    # A unix socket path must fit in 108 bytes; pytest's temporary directories may not.
    sockdir = Path(tempfile.mkdtemp(prefix="shoal-qmp-"))
    running = Guest(guest_image, workdir, sockdir)
    try:
        boot = running.wait_for_ssh()
        print(f"test guest: SSH banner {boot:.1f}s after QEMU started (tcg)")
        yield running
    finally:
        running.kill()  # also when booting failed: never leave a QEMU behind
        shutil.rmtree(sockdir, ignore_errors=True)


def test_guest_files_are_cached(guest_image: TestGuest) -> None:
    started = time.monotonic()
    again = build_test_guest()
    assert time.monotonic() - started < 1.0
    assert again == guest_image
    for path in (again.kernel, again.initrd, again.disk, again.private_key):
        assert path.is_file(), path
    assert again.private_key.stat().st_mode & 0o777 == 0o600
    assert (again.disk.parent / "done").exists()


def test_ssh_runs_commands(guest: Guest) -> None:
    result = guest.ssh("uname -a")
    assert "Linux" in result.stdout
    assert guest.ssh("exit 7", check=False).returncode == 7
    assert guest.ssh("id -u").stdout.strip() == "0"
    assert guest.ssh("tty", tty=True).stdout.strip().startswith("/dev/pts/")


def test_scp_copies_both_ways(guest: Guest, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 * 2**20))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    for mode, flags in (("sftp", []), ("legacy", ["-O"])):
        guest.scp(*flags, str(payload), guest.remote(f"/root/{mode}.bin"))
        remote_sum = guest.ssh(f"sha256sum /root/{mode}.bin").stdout.split()[0]
        assert remote_sum == digest, mode
        back = tmp_path / f"{mode}-back.bin"
        guest.scp(*flags, guest.remote(f"/root/{mode}.bin"), str(back))
        assert hashlib.sha256(back.read_bytes()).hexdigest() == digest, mode


def test_disk_has_room_for_50_mb(guest: Guest) -> None:
    guest.ssh("dd if=/dev/zero of=/root/big bs=1M count=50 2>/dev/null && sync")
    assert guest.ssh("stat -c %s /root/big").stdout.strip() == str(50 * 2**20)
    guest.ssh("rm /root/big")


def test_acpi_powerdown_stops_qemu(guest: Guest) -> None:
    guest.qmp("system_powerdown")
    started = time.monotonic()
    try:
        code = guest.proc.wait(timeout=POWEROFF_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"QEMU still running {POWEROFF_TIMEOUT:.0f}s after system_powerdown:\n"
                    f"{guest.console_tail()}")  # fmt: skip
    print(f"test guest: powered off {time.monotonic() - started:.1f}s after system_powerdown")
    assert code == 0, guest.console_tail()
    assert "shoal-test-guest: powering off" in guest.console_tail(200)
