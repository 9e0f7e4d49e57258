"""Tunnels to a real guest on `shoal dev --backend qemu`, through the CLI: `shoal ssh` with the
real OpenSSH client (remote exit codes come back), 50 MB in and out with `shoal scp` keeping its
checksum, 50 tunnels at once to an echo server in the guest, the serial console both ways, the VNC display,
a node-port mapping, and `shoal scp -O` to a guest with no sftp-server."""

import hashlib
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from helpers import SHOAL, kill_group
from qemu_dev import TEST_IMAGE, QemuDev
from shoal.testguest import TestGuest

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "ssh", "scp")),
    reason="needs qemu-system-x86_64, qemu-img and the OpenSSH client (make system-deps)",
)

BOOT_TIMEOUT = 300
BIG = 50 * 2**20


def _lines_until(process: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> bytes:
    """What the process printed up to and including pattern (AssertionError after timeout)."""
    assert process.stdout is not None
    seen: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        while chunk := process.stdout.read1(4096):
            seen.put(chunk)

    threading.Thread(target=pump, daemon=True).start()
    out = b""
    while pattern not in out:
        try:
            out += seen.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {pattern!r} in {out[-2000:]!r}") from None
    return out


def _forwarder(dev: QemuDev, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [SHOAL, *args],
        env=dev.cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out = _lines_until(process, b"\n", 60)
    found = re.search(rb"127\.0\.0\.1:(\d+)", out)
    assert found, out
    return process, int(found.group(1))


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
        return conn.recv(64)


def _echo(conn: socket.socket, payload: bytes) -> bytes:
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _kubectl_shoal(dev: QemuDev, base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl (the venv's) running the kubectl-shoal plugin, with a kubeconfig naming this
    shoal dev and no shoal context at all."""
    kubeconfig = base / "kubeconfig"
    token = (dev.data_dir / "admin.token").read_text().strip()
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "d", "cluster": {"server": f"http://127.0.0.1:{dev.port}"}}],
                "users": [{"name": "d", "user": {"token": token}}],
                "contexts": [{"name": "d", "context": {"cluster": "d", "user": "d"}}],
                "current-context": "d",
            }
        )
    )
    bin_dir = Path(SHOAL).parent
    env = {
        **dev.cli.env,
        "KUBECONFIG": str(kubeconfig),
        "SHOAL_CONFIG": str(base / "no-shoal-contexts.yaml"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [str(bin_dir / "kubectl"), "shoal", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_ssh_scp_console_vnc_and_node_ports_through_tunnels(
    qemu_dev: QemuDev, guest_image: TestGuest, tmp_path: Path
) -> None:
    dev = qemu_dev
    dev.cli.run(
        "vm", "deploy", "t1", "--image", TEST_IMAGE,
        "--cpu", "1", "--memory", "512Mi", "--disk", "1Gi", "--port", "0:22", "--wait",
        timeout=BOOT_TIMEOUT,
    )  # fmt: skip
    key = ["-i", str(guest_image.private_key)]

    # shoal ssh: the remote command's output and exit code.
    uname = dev.cli.run("ssh", "t1", *key, "--", "uname", "-a", timeout=120)
    assert uname.stdout.startswith("Linux shoal-test-guest"), uname.stdout
    assert dev.cli.run("ssh", "t1", *key, "--", "exit 7", check=False).returncode == 7
    # The same through kubectl: `kubectl shoal ssh` on kubectl's context (not shoal's).
    plugin = _kubectl_shoal(dev, tmp_path, "ssh", "t1", *key, "--", "hostname")
    assert plugin.returncode == 0 and plugin.stdout.strip(), plugin.stderr

    # 50 MB in and out with scp, through the tunnel; the guest keeps it in a tmpfs.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(BIG))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    dev.cli.run("scp", *key, str(big), "t1:/run/big.bin", timeout=600)
    remote = dev.cli.run("ssh", "t1", *key, "--", "sha256sum /run/big.bin", timeout=120)
    assert remote.stdout.split()[0] == digest
    back = tmp_path / "back.bin"
    dev.cli.run("scp", *key, "t1:/run/big.bin", str(back), timeout=600)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest

    # 50 tunnels open at once to an echo server in the guest (a port the VM's spec did not
    # list: the agent publishes it on demand), then all carry their own bytes there and back at
    # the same time. busybox nc listens with a backlog of one, so the tunnels are opened one by
    # one (each answered before the next), and used all together.
    dev.cli.run("ssh", "t1", *key, "--", "setsid nc -ll -p 7 -e cat </dev/null >/dev/null 2>&1 &")
    forwarder, local = _forwarder(dev, "port-forward", "t1", ":7")
    connections = []
    try:
        for _ in range(50):
            conn = socket.create_connection(("127.0.0.1", local), timeout=120)
            connections.append(conn)
            conn.sendall(b"+")
            assert conn.recv(1) == b"+"
        payloads = [os.urandom(20_000 + i) for i in range(50)]
        with ThreadPoolExecutor(50) as pool:
            replies = list(pool.map(_echo, connections, payloads))
    finally:
        for conn in connections:
            conn.close()
        kill_group(forwarder)
    assert forwarder.stderr is not None
    problems = forwarder.stderr.read().decode()
    assert [len(r) for r in replies] == [len(p) for p in payloads], problems
    assert replies == payloads

    # The serial console, both ways: a shell on ttyS0 runs what we type.
    console = subprocess.Popen(
        [SHOAL, "console", "t1"],
        env=dev.cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert console.stdin is not None
        console.stdin.write(b"\n")  # the console shell starts on Enter
        console.stdin.flush()
        console.stdin.write(b"echo console-$((6 * 7))\n")
        console.stdin.flush()
        assert b"console-42" in _lines_until(console, b"console-42", 120)
    finally:
        kill_group(console)

    # VNC: the display speaks RFB.
    vnc, vnc_port = _forwarder(dev, "vnc", "t1")
    try:
        assert _banner(vnc_port).startswith(b"RFB 003.")
    finally:
        kill_group(vnc)

    # The node-port mapping: guest 22 published on the node's address, shown in the status.
    ports = dev.cli.json("vm", "get", "t1")["status"]["ports"]
    mapped = next(p for p in ports if p["guest"] == 22)
    assert mapped["address"] == "0.0.0.0" and mapped["host"] > 0
    assert _banner(mapped["host"]).startswith(b"SSH-2.0-")

    # A guest with no sftp-server (as dropbear-only and busybox images are): scp's default SFTP
    # fails, `shoal scp -O` (the legacy protocol, the guest's scp) copies both ways. Last, as it
    # takes the sftp-server out of this VM's overlay.
    dev.cli.run("ssh", "t1", *key, "--", "rm -f /usr/lib/sftp-server /usr/lib/openssh/sftp-server")
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(2**20))
    small_digest = hashlib.sha256(small.read_bytes()).hexdigest()
    sftp = dev.cli.run("scp", *key, str(small), "t1:/run/small.bin", check=False, timeout=120)
    assert sftp.returncode != 0 and "sftp-server" in sftp.stderr, sftp.stderr
    dev.cli.run("scp", "-O", *key, str(small), "t1:/run/small.bin", timeout=120)
    remote = dev.cli.run("ssh", "t1", *key, "--", "sha256sum /run/small.bin", timeout=120)
    assert remote.stdout.split()[0] == small_digest
    small_back = tmp_path / "small-back.bin"
    dev.cli.run("scp", "--legacy", *key, "t1:/run/small.bin", str(small_back), timeout=120)
    assert hashlib.sha256(small_back.read_bytes()).hexdigest() == small_digest
    dev.cli.run("vm", "delete", "t1", "--wait", timeout=120)
