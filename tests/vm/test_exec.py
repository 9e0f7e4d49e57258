"""Guest exec and startup scripts on real guests, through the CLI on `shoal dev --backend qemu`:
the agent logs into the test guest over SSH with an ssh-auth Secret, through the same path as the
tunnels. One guest serves every exec check; a second shows a VM that deletes itself when its
startup script ends."""

import asyncio
import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers import SHOAL, wait_until
from qemu_dev import TEST_IMAGE, QemuDev
from shoal.testguest import TestGuest
from shoal.tunnel.client import Endpoint
from shoal.tunnel.execclient import execute

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img")),
    reason="needs qemu-system-x86_64 and qemu-img (make system-deps)",
)

DEPLOY = ["--image", TEST_IMAGE, "--cpu", "1", "--memory", "256Mi", "--disk", "1Gi"]
BOOT_TIMEOUT = 300
TOKEN = "s3cr3t-t0ken-value"
EXIT_GUEST_ACCESS = 255


def shoal(
    dev: QemuDev, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The CLI as a user runs it (exit code and both streams kept apart)."""
    return subprocess.run(
        [SHOAL, *args],
        input=stdin,
        capture_output=True,
        env={**dev.cli.env, **(env or {})},
        timeout=180,
    )


def startup_condition(dev: QemuDev, name: str) -> dict[str, Any] | None:
    vm = dev.cli.json("vm", "get", name)
    conditions = (vm.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "StartupScript"), None)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def tty_sizes(dev: QemuDev, vm: str) -> list[str]:
    """`stty size` in a TTY exec opened at 100x24, then again after a resize to 132x40."""
    token = (dev.data_dir / "admin.token").read_text().strip()
    endpoint = Endpoint(f"http://127.0.0.1:{dev.port}", token, None, "default", vm)
    output = bytearray()
    first_size = asyncio.Event()
    resized = asyncio.Event()

    def on_stdout(data: bytes) -> None:
        output.extend(data)
        if b"\n" in output:
            first_size.set()

    async def resizes() -> AsyncIterator[tuple[int, int]]:
        await first_size.wait()
        yield 132, 40
        resized.set()

    async def stdin() -> AsyncIterator[bytes]:
        await resized.wait()  # the resize frame is on its way first, on the same stream
        yield b"go\n"

    async def run() -> int | None:
        result = await execute(
            endpoint,
            ["sh", "-c", "stty size; read line; stty size"],
            stdout=on_stdout,
            stderr=on_stdout,
            stdin=stdin(),
            tty=True,
            size=(100, 24),
            resizes=resizes(),
        )
        return result.exit_code

    assert asyncio.run(asyncio.wait_for(run(), 60)) == 0, bytes(output)
    lines = [line.strip() for line in output.decode().splitlines()]
    return [line for line in lines if line and line != "go"]


def test_exec_and_startup_scripts_on_real_guests(
    qemu_dev: QemuDev, guest_image: TestGuest, tmp_path: Path
) -> None:
    dev = qemu_dev
    dev.guest_key_secret(guest_image)
    created = shoal(
        dev, "secret", "create", "generic", "tokens", "--from-env", "token=CI_TOKEN",
        env={"CI_TOKEN": TOKEN},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    script = tmp_path / "startup.sh"
    script.write_text('echo "startup says $GREETING with $TOKEN"\necho to-stderr >&2\nexit 3\n')
    dev.cli.run(
        "vm", "deploy", "job", *DEPLOY,
        "--access-secret", "guest-key",
        "--env", "GREETING=hello, world",
        "--env-secret", "TOKEN=tokens:token",
        "--startup-script", str(script),
        "--wait", timeout=BOOT_TIMEOUT,
    )  # fmt: skip

    # The startup script ran once the guest was Ready: its exit code and output are kept.
    wait_until(
        lambda: (startup_condition(dev, "job") or {}).get("reason") == "Failed",
        timeout=120,
        what="the startup script to end",
    )
    assert startup_condition(dev, "job") == {
        **(startup_condition(dev, "job") or {}),
        "status": "False",
        "message": "exit code 3",
    }
    log = shoal(dev, "logs", "job", "--startup")
    assert log.returncode == 0, log.stderr
    assert f"startup says hello, world with {TOKEN}\n".encode() in log.stdout
    assert b"to-stderr\n" in log.stdout
    events = dev.cli.run("events", "-o", "json").stdout
    assert TOKEN not in events, events
    assert TOKEN not in dev.log.read_text()

    # Exec: stdout and stderr apart, exit codes passed through, the VM's env, stdin.
    ran = shoal(dev, "exec", "job", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (ran.returncode, ran.stdout, ran.stderr) == (7, b"out\n", b"err\n")
    assert shoal(dev, "exec", "job", "--", "true").returncode == 0
    missing = shoal(dev, "exec", "job", "--", "no-such-command")
    assert missing.returncode == 127 and b"not found" in missing.stderr
    env = shoal(dev, "exec", "job", "--", "sh", "-c", 'echo "$GREETING/$TOKEN"')
    assert env.stdout == f"hello, world/{TOKEN}\n".encode()
    payload = os.urandom(3 * 2**20)
    summed = shoal(dev, "exec", "-i", "job", "--", "sha256sum", stdin=payload)
    assert summed.returncode == 0, summed.stderr
    assert summed.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
    on_tty = shoal(dev, "exec", "-t", "job", "--", "sh", "-c", "test -t 1 && echo on-a-tty")
    assert on_tty.returncode == 0, on_tty.stderr
    assert b"on-a-tty" in on_tty.stdout
    assert tty_sizes(dev, "job") == ["24 100", "40 132"]

    # Output is live: the first line arrives while the command still runs.
    process = subprocess.Popen(
        [SHOAL, "exec", "job", "--", "sh", "-c", "echo first; sleep 5; echo second"],
        stdout=subprocess.PIPE,
        env=dev.cli.env,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"first\n"
    assert process.poll() is None, "the first line came before the command ended"
    assert not processes_mentioning(TOKEN), "no secret in any process list on the host"
    assert process.wait(timeout=60) == 0

    # A guest that refuses the Secret's credentials, and a VM that is not Running.
    shoal(
        dev,
        "secret",
        "create",
        "ssh",
        "wrong",
        "--user",
        "root",
        "--password-stdin",
        stdin=b"nope\n",
    )
    api = dev.api()
    api.patch(
        "virtualmachines", "job", {"spec": {"access": {"secretRef": {"name": "wrong"}}}}, "default"
    )
    refused = shoal(dev, "exec", "job", "--", "true")
    assert refused.returncode == EXIT_GUEST_ACCESS, refused.stderr
    assert b"refused user 'root'" in refused.stderr
    dev.cli.run("vm", "stop", "job", "--wait", timeout=120)
    stopped = shoal(dev, "exec", "job", "--", "true")
    assert stopped.returncode == 1
    assert b"is Stopped, not running" in stopped.stderr
    dev.cli.run("vm", "delete", "job", "--wait", timeout=120)

    # A one-shot VM: ephemeral, deleted once its script ends.
    oneshot = tmp_path / "oneshot.sh"
    oneshot.write_text("echo one job done\n")
    dev.cli.run(
        "vm", "deploy", "oneshot", *DEPLOY,
        "--access-secret", "guest-key", "--startup-script", str(oneshot),
        "--ephemeral", "--delete-when-script-exits",
    )  # fmt: skip
    wait_until(
        lambda: dev.cli.run("vm", "get", "oneshot", check=False).returncode != 0,
        timeout=BOOT_TIMEOUT,
        what="the one-shot VM to delete itself",
    )
    assert dev.vm_state_dirs() == []
