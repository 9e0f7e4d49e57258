"""PostgreSQL restarted under two controller replicas and a stream of deploys: while it is down
the replicas say they are not ready (and stay up); once it is back they recover by themselves,
without a restart: a leader again, watches and the agent caught up, every VM the API accepted
placed and running.

The test server runs with asynchronous commit (as every test server here does), so a crash may
take the last acknowledged commits with it; the replicas must come through that too
(shoal.store.watch: a store that lost commits makes every watch relist)."""

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fixtures.postgres import (
    PostgresServer,
    find_bindir,
    start_again,
    start_server,
    stop_only,
    stop_server,
)
from helpers import (
    AgentProcess,
    ControllerProcess,
    another_replica,
    create_join_token,
    processes,
    wait_until,
)
from shoal.client import API, Client

pytestmark = pytest.mark.slow
TTL = 3.0


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own: restarting the session's would cut every other test off."""
    bindir = find_bindir()
    assert bindir is not None, "PostgreSQL is not installed (make system-deps)"
    server = start_server(bindir)
    try:
        yield server
    finally:
        stop_server(server)


def ready(replica: ControllerProcess) -> int:
    try:
        return httpx.get(f"{replica.url}/readyz", verify=False, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def phase(client: Client, name: str) -> str:
    try:
        vm = client.get("virtualmachines", name, "default")
    except Exception:
        return ""
    return str((vm.get("status") or {}).get("phase"))


def deploy(client: Client, name: str) -> bool:
    """Whether the API accepted (or had already accepted) the VM."""
    spec = {"image": "sim:1", "cpu": 1, "memory": "1Gi", "disk": "1Gi"}
    try:
        client.create("virtualmachines", {"metadata": {"name": name}, "spec": spec}, "default")
    except Exception as error:
        return "already exists" in str(error)
    return True


class Deployer(threading.Thread):
    """Deploys a VM every 50 ms through both replicas until stopped; remembers what was
    accepted. An answer lost with the database (a timeout, a 503) counts as not accepted."""

    def __init__(self, clients: list[Client]) -> None:
        super().__init__(daemon=True)
        self.clients = clients
        self.accepted: list[str] = []
        self.refused = 0
        self.done = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.done.wait(0.05):
            name = f"load-{number}"
            if deploy(self.clients[number % 2], name):
                self.accepted.append(name)
            else:
                self.refused += 1
            number += 1


def test_replicas_ride_out_a_postgresql_restart_under_load(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    database = own_server.create_database("restart")
    common = ["--database-url", database, "--leader-ttl", str(TTL)]
    first = ControllerProcess(tmp_path / "a", extra_args=[*common, "--replica", "a"])
    first.start()
    second = another_replica(first, tmp_path / "b", [*common, "--replica", "b"])
    with processes(first, second):
        second.start()
        a, b = first.client(), second.client()
        agent = AgentProcess(
            second.url, create_join_token(b), "p1", tmp_path / "agent",
            extra_args=["--heartbeat-interval", "0.5", "--sim-boot-delay", "0.05",
                        "--sim-cpu", "512", "--sim-memory", "512Gi", "--sim-vms", "512"],
        )  # fmt: skip
        with processes(agent):
            agent.start()
            assert deploy(a, "before")
            wait_until(lambda: phase(b, "before") == "Running", what="a VM before the restart")

            load = Deployer([a, b])
            load.start()
            try:
                wait_until(lambda: len(load.accepted) >= 10, what="deploys under way")
                stop_only(own_server)
                try:
                    wait_until(lambda: ready(first) == ready(second) == 503, what="both not ready")
                finally:
                    start_again(own_server)
                wait_until(
                    lambda: ready(first) == ready(second) == 200, timeout=90, what="both ready"
                )
                accepted_then = len(load.accepted)
                wait_until(
                    lambda: len(load.accepted) >= accepted_then + 10, what="deploys accepted again"
                )
            finally:
                load.done.set()
                load.join()

            leader = wait_until(
                lambda: b.request("GET", f"{API}/controllerstatus")["leader"]["replica"],
                timeout=30,
                what="a leader again",
            )
            assert leader in ("a", "b")

            # Every VM the API accepted and the database kept runs (a crash under asynchronous
            # commit may have lost the last few acknowledged ones, and with them their names).
            def not_running() -> list[str]:
                items = b.list("virtualmachines", "default")["items"]
                return [vm["metadata"]["name"] for vm in items
                        if (vm.get("status") or {}).get("phase") != "Running"]  # fmt: skip

            wait_until(lambda: not not_running(), timeout=60, what="every VM kept Running")
            kept = {vm["metadata"]["name"] for vm in a.list("virtualmachines", "default")["items"]}
            assert "before" in kept and len(kept) >= len(load.accepted) - 20
            assert deploy(a, "after")
            wait_until(lambda: phase(b, "after") == "Running", timeout=60, what="a VM after")
            assert first.process is not None and first.process.poll() is None
            assert second.process is not None and second.process.poll() is None
