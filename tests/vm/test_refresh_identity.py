"""The test guest's fresh-identity hook (/usr/lib/shoal/refresh-identity), run for real on a
TCG boot of the guest: new host key, listener restarted, the calling session unharmed."""

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import Fatal, wait_until
from qemu_dev import guest_ssh
from shoal.testguest import READY_LINE, TestGuest, free_port

BOOT_TIMEOUT = 120.0  # CI machines without KVM are slow
HOOK = "/usr/lib/shoal/refresh-identity"

pytestmark = pytest.mark.skipif(
    not all(
        shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keyscan")
    ),
    reason="needs qemu-system-x86_64, qemu-img and the OpenSSH client (make system-deps)",
)


@dataclass
class Booted:
    image: TestGuest
    port: int

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        return guest_ssh(self.image, self.port, command)

    def host_keys(self) -> set[str]:
        """The host keys a new connection is offered, as "type base64". Only ed25519, the
        guest's one type: a scan for every type opens five connections at once, which with
        any still counted from an earlier scan exceed dropbear's limit of five unauthenticated
        connections per address (it then closes the extra ones unanswered)."""
        argv = ["ssh-keyscan", "-t", "ed25519", "-T", "30", "-p", str(self.port), "127.0.0.1"]
        scan = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        keys = {" ".join(line.split()[1:3]) for line in scan.stdout.splitlines() if line}
        assert keys, f"ssh-keyscan got no key: {scan.stderr}"
        return keys


@pytest.fixture
def booted(guest_image: TestGuest, tmp_path: Path) -> Iterator[Booted]:
    """The test guest booted under TCG, answering SSH; QEMU is killed afterwards, pass or fail."""
    port = free_port()
    console = tmp_path / "console.log"
    overlay = guest_image.create_overlay(tmp_path / "overlay.qcow2")
    argv = guest_image.qemu_command(overlay, ssh_port=port, serial=f"file:{console}")
    with (tmp_path / "qemu.log").open("wb") as log:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:

        def answers_ssh() -> bool:
            text = console.read_text(errors="replace") if console.exists() else ""
            if qemu.poll() is not None:
                raise Fatal(f"QEMU exited ({qemu.returncode}): {text[-2000:]}")
            # Connecting before dropbear listens only makes QEMU's user network retry for seconds.
            if READY_LINE not in text:
                return False
            return guest_ssh(guest_image, port, "true").returncode == 0

        wait_until(answers_ssh, timeout=BOOT_TIMEOUT, interval=0.2, what="the guest's SSH")
        yield Booted(guest_image, port)
    finally:
        qemu.kill()
        qemu.wait()


def test_refresh_identity_gives_a_new_host_key_and_keeps_the_session(booted: Booted) -> None:
    public = (booted.image.disk.parent / "host_ed25519.pub").read_text()
    baked = " ".join(public.split()[:2])  # without the comment
    assert booted.host_keys() == {baked}
    listener = booted.ssh("cat /run/dropbear.pid").stdout.strip()

    # The session that runs the hook outlives the listener it came from.
    ran = booted.ssh(f"SHOAL_VM_NAME=x {HOOK}; echo hook-exit=$?")
    assert ran.returncode == 0, ran.stderr
    assert "hook-exit=0" in ran.stdout, ran.stdout + ran.stderr
    assert ran.stderr == ""

    # A new connection, to a new listener, sees the new key; the key file holds it too.
    fresh = booted.host_keys()
    assert len(fresh) == 1 and fresh != {baked}
    on_disk = booted.ssh("dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key").stdout
    assert next(iter(fresh)) in on_disk
    assert booted.ssh("cat /run/dropbear.pid").stdout.strip() != listener
    assert booted.ssh("ls /etc/dropbear").stdout.split() == ["dropbear_ed25519_host_key"]

    random = booted.ssh("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'").stdout
    assert len(random) == 64 and random != "0" * 64

    # Again: it does not depend on the state the first run left.
    again = booted.ssh(f"SHOAL_VM_NAME=x {HOOK}")
    assert again.returncode == 0, again.stderr
    assert booted.host_keys() not in ({baked}, fresh)
