"""Tunnels through a real controller and agent, driven with the CLI: `shoal port-forward`
(listener and --stdio), refusals, idle timeout, agent loss and reconnection, and bounded memory
under a reader that reads nothing. The VM is a sim VM whose ports lead to this host's loopback
(`--sim-ports-to-host`), so the far end is a TCP server of the test's own."""

import hashlib
import os
import random
import re
import socket
import socketserver
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import (
    SHOAL,
    AgentProcess,
    Cli,
    ControllerProcess,
    create_join_token,
    kill_group,
    processes,
    wait_until,
)
from shoal.client import resource_path

IDLE_TIMEOUT = 6


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1  # type: ignore[attr-defined]
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


class _Source(socketserver.BaseRequestHandler):
    """Sends SOURCE_BYTES as fast as the reader takes them, counting what it got out."""

    def handle(self) -> None:
        block = os.urandom(1 << 20)
        self.server.sent = 0  # type: ignore[attr-defined]
        with self.request:
            while self.server.sent < self.server.limit:  # type: ignore[attr-defined]
                self.request.sendall(block)
                self.server.sent += len(block)  # type: ignore[attr-defined]
            # Closing with unread input would reset the connection and drop what is in flight.
            self.request.shutdown(socket.SHUT_WR)
            while self.request.recv(65536):
                pass


class _Resetter(socketserver.BaseRequestHandler):
    """Answers a little, then resets the connection: a far end that breaks mid-stream."""

    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(b"partial answer")
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.close()  # an RST, with no FIN before it


class _Recorder(socketserver.BaseRequestHandler):
    """Reads until its connection ends, and records how: "eof" or "reset"."""

    def handle(self) -> None:
        ending = "eof"
        try:
            while self.request.recv(65536):
                pass
        except ConnectionResetError:
            ending = "reset"
        self.server.endings.append(ending)  # type: ignore[attr-defined]


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Fifty tunnels connect at once: a short accept queue would drop connections into SYN
    # cookies, and a failed cookie resets the connection.
    request_queue_size = 128
    connections = 0
    sent = 0
    limit = 0

    def __init__(self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler]):
        super().__init__(address, handler)
        self.endings: list[str] = []


@dataclass
class Tunnels:
    controller: ControllerProcess
    agent: AgentProcess
    cli: Cli
    echo: _Server
    source: _Server
    resetter: _Server
    recorder: _Server
    base: Path


def _serve(handler: type[socketserver.BaseRequestHandler]) -> _Server:
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def tunnels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnels]:
    base = tmp_path_factory.mktemp("tunnels")
    controller = ControllerProcess(
        base / "controller", extra_args=["--tunnel-idle-timeout", str(IDLE_TIMEOUT)]
    )
    controller.start()
    echo, source = _serve(_Echo), _serve(_Source)
    resetter, recorder = _serve(_Resetter), _serve(_Recorder)
    with processes(controller):
        agent = AgentProcess(
            controller.url,
            create_join_token(controller.client()),
            "tun",
            base / "agent",
            extra_args=["--sim-ports-to-host", "--sim-boot-delay", "0"],
        )
        agent.start()
        with processes(agent):
            cli = Cli({**os.environ, "SHOAL_CONFIG": str(base / "config.yaml")})
            cli.run(
                "context", "add", "it",
                "--server", controller.url,
                "--token-file", str(controller.data_dir / "admin.token"),
                "--ca-fingerprint", controller.fingerprint,
            )  # fmt: skip
            wait_until(lambda: cli.json("node", "list")["items"], what="the agent's node")
            cli.run("vm", "deploy", "box", "--image", "sim:1", "--wait")
            try:
                yield Tunnels(controller, agent, cli, echo, source, resetter, recorder, base)
            finally:
                for server in (echo, source, resetter, recorder):
                    server.shutdown()


def _stdio(t: Tunnels, port: int, data: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SHOAL, "port-forward", "--stdio", *extra, "box", str(port)],
        input=data,
        env=t.cli.env,
        capture_output=True,
        timeout=120,
    )


def test_stdio_tunnel_carries_bytes_both_ways_and_half_close(tunnels: Tunnels) -> None:
    data = random.randbytes(3 * 2**20 + 17)
    result = _stdio(tunnels, tunnels.echo.server_address[1], data)
    assert result.returncode == 0, result.stderr
    # The echo server answers everything, then closes after our EOF: the whole reply arrives.
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


class _Forwarder:
    def __init__(self, t: Tunnels, *specs: str, vm: str = "box") -> None:
        self.process = subprocess.Popen(
            [SHOAL, "port-forward", vm, *specs],
            env=t.cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.ports: list[int] = []
        for _ in specs:
            line = self.process.stdout.readline()
            found = re.search(r"127\.0\.0\.1:(\d+) ->", line)
            assert found, f"unexpected output {line!r}; stderr: {self._stderr()}"
            self.ports.append(int(found.group(1)))

    def _stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def stop(self) -> str:
        kill_group(self.process)
        assert self.process.stderr is not None
        return self.process.stderr.read()


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_fifty_tunnels_at_once_each_carry_their_own_bytes(tunnels: Tunnels) -> None:
    forwarder = _Forwarder(tunnels, f":{tunnels.echo.server_address[1]}")
    try:
        payloads = [random.randbytes(200_000 + i) for i in range(50)]
        with ThreadPoolExecutor(max_workers=50) as pool:
            replies = list(pool.map(lambda p: _exchange(forwarder.ports[0], p), payloads))
    finally:
        problems = forwarder.stop()
    assert [len(reply) for reply in replies] == [len(p) for p in payloads], problems
    assert replies == payloads


def test_several_ports_at_once_from_one_command(tunnels: Tunnels) -> None:
    forwarder = _Forwarder(
        tunnels, f":{tunnels.echo.server_address[1]}", f":{tunnels.source.server_address[1]}"
    )
    try:
        assert _exchange(forwarder.ports[0], b"hello") == b"hello"
        tunnels.source.limit = 3 * 2**20
        assert len(_exchange(forwarder.ports[1], b"")) == 3 * 2**20
    finally:
        forwarder.stop()


def test_a_forbidden_token_is_refused_before_any_byte_reaches_the_vm(tunnels: Tunnels) -> None:
    admin = tunnels.controller.client()
    admin.create("serviceaccounts", {"metadata": {"name": "watcher"}}, "default")
    admin.create(
        "rolebindings",
        {
            "metadata": {"name": "watcher-view"},
            "roleRef": {"name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "watcher"}],
        },
        "default",
    )
    token = admin.request(
        "POST", resource_path("serviceaccounts", "default", "watcher", "token"), body={}
    )["status"]["token"]
    token_file = tunnels.base / "viewer.token"
    token_file.write_text(token)
    tunnels.cli.run(
        "context", "add", "viewer",
        "--server", tunnels.controller.url,
        "--token-file", str(token_file),
        "--ca-fingerprint", tunnels.controller.fingerprint,
    )  # fmt: skip
    tunnels.cli.run("context", "use", "it")
    before = tunnels.echo.connections
    result = _stdio(tunnels, tunnels.echo.server_address[1], b"secret", "--context", "viewer")
    assert result.returncode == 1
    assert b"connect" in result.stderr and b"error:" in result.stderr, result.stderr
    assert tunnels.echo.connections == before
    # The viewer may still read the VM: only tunnels are refused.
    assert tunnels.cli.json("vm", "get", "box", "--context", "viewer")["metadata"]["name"] == "box"


def test_tunnels_to_missing_or_stopped_vms_and_closed_ports_say_why(tunnels: Tunnels) -> None:
    result = subprocess.run(
        [SHOAL, "port-forward", "--stdio", "nobox", "22"],
        env=tunnels.cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "nobox" in result.stderr and "not found" in result.stderr
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = _stdio(tunnels, closed_port, b"")
    assert refused.returncode == 1
    assert f"port {closed_port}".encode() in refused.stderr, refused.stderr
    tunnels.cli.run("vm", "deploy", "parked", "--image", "sim:1", "--wait")
    tunnels.cli.run("vm", "stop", "parked", "--wait")
    stopped = subprocess.run(
        [SHOAL, "port-forward", "parked", "2222"],
        env=tunnels.cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stopped.returncode == 1 and "Stopped" in stopped.stderr
    bad = _stdio(tunnels, 0, b"")
    assert bad.returncode == 1 and b"remote port 0 is not a TCP port" in bad.stderr


def test_an_idle_tunnel_is_closed_with_a_reason(tunnels: Tunnels) -> None:
    forwarder = _Forwarder(tunnels, f":{tunnels.echo.server_address[1]}")
    try:
        with socket.create_connection(("127.0.0.1", forwarder.ports[0]), timeout=60) as conn:
            conn.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            started = time.monotonic()
            with pytest.raises(ConnectionResetError):  # the tunnel did not end: no clean EOF
                conn.recv(1)
            assert time.monotonic() - started >= IDLE_TIMEOUT - 1
    finally:
        printed = forwarder.stop()
    assert "idle" in printed


def test_a_far_end_that_resets_is_reported_and_resets_the_local_connection(
    tunnels: Tunnels,
) -> None:
    port = tunnels.resetter.server_address[1]
    result = _stdio(tunnels, port, b"question")
    assert result.returncode == 1
    assert f"the connection to the VM's port {port} broke".encode() in result.stderr, result
    forwarder = _Forwarder(tunnels, f":{port}")
    try:
        with socket.create_connection(("127.0.0.1", forwarder.ports[0]), timeout=60) as conn:
            conn.sendall(b"question")
            with pytest.raises(ConnectionResetError):  # never a clean EOF after a cut answer
                while conn.recv(65536):
                    pass
    finally:
        printed = forwarder.stop()
    assert f"tunnel closed: the connection to the VM's port {port} broke" in printed


def test_a_local_connection_that_resets_resets_the_vms_end(tunnels: Tunnels) -> None:
    forwarder = _Forwarder(tunnels, f":{tunnels.recorder.server_address[1]}")
    try:
        with socket.create_connection(("127.0.0.1", forwarder.ports[0]), timeout=60) as conn:
            conn.sendall(b"hello")
            conn.shutdown(socket.SHUT_WR)
        wait_until(lambda: tunnels.recorder.endings == ["eof"], what="a clean end at the VM")
        with socket.create_connection(("127.0.0.1", forwarder.ports[0]), timeout=60) as conn:
            conn.sendall(b"hello")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: tunnels.recorder.endings == ["eof", "reset"], what="a reset at the VM")
    finally:
        forwarder.stop()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
def test_a_reader_that_reads_nothing_keeps_controller_and_agent_memory_bounded(
    tunnels: Tunnels,
) -> None:
    assert tunnels.controller.process is not None and tunnels.agent.process is not None
    controller_pid, agent_pid = tunnels.controller.process.pid, tunnels.agent.process.pid
    tunnels.source.limit = 2**30
    forwarder = _Forwarder(tunnels, f":{tunnels.source.server_address[1]}")
    try:
        before = _rss(controller_pid), _rss(agent_pid)
        with socket.create_connection(("127.0.0.1", forwarder.ports[0]), timeout=120) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            conn.sendall(b"go")
            time.sleep(IDLE_TIMEOUT / 2)  # read nothing, while the far end wants to send 1 GiB
            stalled = tunnels.source.sent
            during = _rss(controller_pid), _rss(agent_pid)
            assert stalled < 64 * 2**20, f"the source got {stalled} bytes out to a stalled reader"
            for was, now in zip(before, during, strict=True):
                assert now - was < 64 * 2**20, f"memory grew from {was} to {now}"
            received = 0
            peak = during
            while chunk := conn.recv(1 << 20):
                received += len(chunk)
                if received % (128 * 2**20) < len(chunk):
                    now = _rss(controller_pid), _rss(agent_pid)
                    peak = (max(peak[0], now[0]), max(peak[1], now[1]))
    finally:
        printed = forwarder.stop()
    assert received == 2**30, printed
    for was, top in zip(before, peak, strict=True):
        assert top - was < 64 * 2**20, f"memory grew from {was} to {top} while streaming"


def test_agent_loss_closes_tunnels_with_a_message_and_a_new_agent_serves_at_once(
    tunnels: Tunnels,
) -> None:
    forwarder = _Forwarder(tunnels, f":{tunnels.echo.server_address[1]}")
    try:
        with socket.create_connection(("127.0.0.1", forwarder.ports[0]), timeout=60) as conn:
            conn.sendall(b"before")
            assert conn.recv(6) == b"before"
            tunnels.agent.kill()
            with pytest.raises(ConnectionResetError):  # the tunnel ends with the agent
                conn.recv(1)
        tunnels.agent.start()
        wait_until(
            lambda: _exchange(forwarder.ports[0], b"after") == b"after",
            timeout=60,
            what="a tunnel through the restarted agent",
        )
    finally:
        printed = forwarder.stop()
    assert "lost the connection to the agent of node tun" in printed


def test_deleting_the_vm_closes_its_tunnels_and_says_so(tunnels: Tunnels) -> None:
    tunnels.cli.run("vm", "deploy", "doomed", "--image", "sim:1", "--wait")
    forwarder = _Forwarder(tunnels, f":{tunnels.echo.server_address[1]}", vm="doomed")
    try:
        with socket.create_connection(("127.0.0.1", forwarder.ports[0]), timeout=60) as conn:
            conn.sendall(b"hi")
            assert conn.recv(2) == b"hi"
            tunnels.cli.run("vm", "delete", "doomed")
            with pytest.raises(ConnectionResetError):
                conn.recv(1)
    finally:
        printed = forwarder.stop()
    assert "VirtualMachine doomed was deleted" in printed
