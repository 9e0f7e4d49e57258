"""Controller replicas on one PostgreSQL: one leads (runs the loops) by a lease on the database's
clock; a paused leader loses it to another replica, which takes over the loops, and once resumed
it follows instead of writing; any replica serves the API and reports who leads."""

import asyncio
import base64
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import (
    AgentProcess,
    ControllerProcess,
    another_replica,
    create_join_token,
    metric_samples,
    processes,
    wait_until,
)
from shoal.client import API, Client
from shoal.tunnel.client import Endpoint
from shoal.tunnel.execclient import execute

pytestmark = pytest.mark.slow
TTL = 3.0


def status(client: Client) -> dict[str, Any]:
    return dict(client.request("GET", f"{API}/controllerstatus"))


def leader(client: Client) -> tuple[str | None, int]:
    found = status(client)["leader"]
    return found["replica"], int(found["epoch"])


async def exec_echo(endpoint: Endpoint) -> bytes:
    out = bytearray()
    result = await execute(
        endpoint, ["echo", "through the tunnel"], stdout=out.extend, stderr=out.extend
    )
    assert result.exit_code == 0, out
    return bytes(out)


def deploy(client: Client, name: str) -> None:
    spec = {
        "image": "sim:1",
        "cpu": 1,
        "memory": "1Gi",
        "access": {"secretRef": {"name": "guest"}},  # a sim guest lets anyone in
    }
    client.create("virtualmachines", {"metadata": {"name": name}, "spec": spec}, "default")


def running(client: Client, name: str) -> bool:
    vm = client.get("virtualmachines", name, "default")
    return (vm.get("status") or {}).get("phase") == "Running"


def test_a_paused_leader_loses_the_lease_and_its_successor_runs_the_loops(
    tmp_path: Path, postgres_db: str
) -> None:
    first = ControllerProcess(
        tmp_path / "a",
        extra_args=["--database-url", postgres_db, "--replica", "a", "--leader-ttl", str(TTL)],
    )
    first.start()
    second = another_replica(
        first,
        tmp_path / "b",
        ["--database-url", postgres_db, "--replica", "b", "--leader-ttl", str(TTL)],
    )
    with processes(first, second):
        second.start()
        a, b = first.client(), second.client()
        wait_until(lambda: leader(b) == ("a", 1), what="a leading at epoch 1, seen from b")
        replicas = wait_until(
            lambda: (r := status(b)["replicas"]) and len(r) == 2 and all(x["up"] for x in r) and r
        )
        assert [(r["replica"], r["leader"]) for r in replicas] == [("a", True), ("b", False)]
        assert status(a)["servedBy"] == "a" and status(b)["servedBy"] == "b"
        verbose = httpx.get(f"{second.url}/readyz?verbose=true", verify=False).text
        assert verbose.splitlines()[-1] == "replica b: follower"

        agent = AgentProcess(
            second.url, create_join_token(b), "n1", tmp_path / "agent",
            extra_args=[
                "--heartbeat-interval", "0.5", "--sim-boot-delay", "0.1", "--sim-guest-shell",
            ],
        )  # fmt: skip
        with processes(agent):
            agent.start()
            password = base64.b64encode(b"any").decode()
            b.create(
                "secrets",
                {"metadata": {"name": "guest"}, "type": "ssh-auth", "data": {"password": password}},
                "default",
            )
            deploy(b, "before")
            wait_until(lambda: running(b, "before"), what="a VM placed by leader a")

            # The agent was given b's address; it holds a tunnel channel to each replica, so an
            # exec that lands on a reaches it through a's own channel.
            for replica in (first, second):
                endpoint = Endpoint(
                    replica.url, replica.admin_token, first.ca_pem, "default", "before"
                )
                result = wait_until(
                    lambda endpoint=endpoint: asyncio.run(exec_echo(endpoint)),
                    what=f"an exec through {replica.url}",
                )
                assert result == b"through the tunnel\n"
                metrics = httpx.get(
                    f"{replica.url}/metrics",
                    headers={"Authorization": f"Bearer {replica.admin_token}"},
                    verify=False,
                ).text
                samples = metric_samples(metrics)
                exec_out = frozenset({("stream", "exec"), ("direction", "to-client")})
                assert samples[("shoal_tunnel_bytes_total", exec_out)] > 0
                assert samples[("shoal_tunnels_open", frozenset({("stream", "exec")}))] == 0

            # a stops answering (and renewing): once its lease lapses, b leads at epoch 2.
            assert first.process is not None
            os.killpg(first.process.pid, signal.SIGSTOP)
            try:
                wait_until(lambda: leader(b) == ("b", 2), timeout=4 * TTL, what="b leading")
                deploy(b, "during")
                wait_until(lambda: running(b, "during"), what="a VM placed by leader b")
            finally:
                os.killpg(first.process.pid, signal.SIGCONT)

            # a wakes up believing it leads: its loops' first writes are refused by the epoch
            # check, and it steps down on its next look at the lease.
            wait_until(
                lambda: "no longer leads" in (first.log_path or Path()).read_text(),
                timeout=4 * TTL,
                what="a stepping down",
            )
            assert leader(a) == ("b", 2)
            deploy(a, "after")  # a still serves the API; b's loops place the VM
            wait_until(lambda: running(a, "after"), what="a VM created on a, placed by b")

            # b killed outright: a takes the lease back at epoch 3 and runs the loops again.
            second.kill()
            wait_until(lambda: leader(a) == ("a", 3), timeout=4 * TTL, what="a leading again")
            replicas = status(a)["replicas"]
            assert [(r["replica"], r["up"]) for r in replicas] == [("a", True), ("b", False)]
