"""Tunnel throughput and added round-trip time: `shoal port-forward` (a real CLI process, through
a real controller and agent, TLS on the controller) against a direct loopback connection to the
same TCP server, in the same run. The server runs on the agent's host behind a sim VM whose ports
lead to the host's loopback (`--sim-ports-to-host`), so no guest network stack is measured."""

import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.devserver import free_port
from bench.foundation import SHOAL, _percentile, _wait
from shoal.client import Client, resource_path
from shoal.tls import fingerprint_of

TRANSFER = 512 * 2**20
PINGS = 2000
BLOCK = 1 << 20


def _connect(port: int, mode: bytes) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=120)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(mode + b"\n")
    return conn


def _upload(port: int) -> float:
    """MB/s of TRANSFER bytes sent to the sink, until it counted them all."""
    block = b"\xa5" * BLOCK
    with _connect(port, b"sink") as conn:
        started = time.perf_counter()
        for _ in range(TRANSFER // BLOCK):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        answer = conn.makefile("rb").readline()
        elapsed = time.perf_counter() - started
    assert int(answer) == TRANSFER, answer
    return TRANSFER / elapsed / 1e6


def _download(port: int) -> float:
    with _connect(port, b"source %d" % TRANSFER) as conn:
        started = time.perf_counter()
        received = 0
        while data := conn.recv(BLOCK):
            received += len(data)
        elapsed = time.perf_counter() - started
    assert received == TRANSFER, received
    return TRANSFER / elapsed / 1e6


def _round_trips(port: int) -> list[float]:
    with _connect(port, b"echo") as conn:
        samples = []
        for _ in range(PINGS):
            started = time.perf_counter()
            conn.sendall(b"p")
            assert conn.recv(1) == b"p"
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run() -> list[dict[str, Any]]:
    procs: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        try:
            peer = subprocess.Popen(
                [sys.executable, "-m", "bench.tcp_peer"], stdout=subprocess.PIPE, text=True
            )
            procs.append(peer)
            assert peer.stdout is not None
            peer_port = int(peer.stdout.readline())
            port = free_port()
            url = f"https://127.0.0.1:{port}"
            procs.append(
                _start(
                    [SHOAL, "controller", "--data-dir", str(base / "ctl"),
                     "--listen", f"127.0.0.1:{port}"],
                    base / "controller.log",
                )
            )  # fmt: skip
            _wait(
                lambda: httpx.get(url + "/readyz", verify=False).status_code == 200,
                60,
                "the controller",
            )
            token_file = base / "ctl" / "admin.token"
            ca = (base / "ctl" / "tls" / "ca.crt").read_text()
            client = Client(url, token_file.read_text().strip(), ca_pem=ca)
            join = client.request(
                "POST", resource_path("jointokens"), body={"spec": {"ttlSeconds": 3600}}
            )
            procs.append(
                _start(
                    [SHOAL, "agent", "--server", url, "--join-token", join["status"]["token"],
                     "--name", "bench", "--backend", "sim", "--state-dir", str(base / "agent"),
                     "--sim-boot-delay", "0", "--sim-ports-to-host"],
                    base / "agent.log",
                )
            )  # fmt: skip
            _wait(lambda: client.list("nodes")["items"], 60, "a node")
            client.create(
                "virtualmachines",
                {"metadata": {"name": "sink"}, "spec": {"image": "sim:1", "cpu": 1}},
                "default",
            )
            _wait(
                lambda: (
                    client.get("virtualmachines", "sink", "default")["status"]["phase"] == "Running"
                ),
                60,
                "the sink VM to be Running",
            )
            env_config = base / "config.yaml"
            env = {"SHOAL_CONFIG": str(env_config), "PATH": "/usr/bin:/bin"}
            added = subprocess.run(
                [SHOAL, "context", "add", "bench", "--server", url, "--token-file",
                 str(token_file), "--ca-fingerprint", fingerprint_of(ca.encode())],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            forwarder = subprocess.Popen(
                [SHOAL, "port-forward", "sink", f":{peer_port}"],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            procs.append(forwarder)
            assert forwarder.stdout is not None
            found = re.search(r"127\.0\.0\.1:(\d+)", forwarder.stdout.readline())
            assert found, "port-forward printed no local port"
            tunnel_port = int(found.group(1))

            rows: list[dict[str, Any]] = []
            for label, target in (("direct loopback", peer_port), ("tunnel", tunnel_port)):
                _round_trips(target)  # warm up
                up = max(_upload(target) for _ in range(2))
                down = max(_download(target) for _ in range(2))
                rtts = _round_trips(target)
                rows += [
                    {"name": f"{label}: upload (512 MiB)", "value": up, "unit": "MB/s"},
                    {"name": f"{label}: download (512 MiB)", "value": down, "unit": "MB/s"},
                    {"name": f"{label}: round trip p50", "value": statistics.median(rtts),
                     "unit": "ms"},
                    {"name": f"{label}: round trip p99", "value": _percentile(rtts, 0.99),
                     "unit": "ms"},
                ]  # fmt: skip
            direct_p50 = rows[2]["value"]
            tunnel_p50 = rows[6]["value"]
            rows.append(
                {"name": "tunnel: added round trip p50", "value": tunnel_p50 - direct_p50,
                 "unit": "ms"}
            )  # fmt: skip
            return rows
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
