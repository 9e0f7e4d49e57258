"""Three controller replicas on PostgreSQL behind HAProxy, five agent processes, 300 deploys while
the leader is SIGKILLed twice: every VM runs, each was bound once, no node was ever
overcommitted, and a watch on a surviving replica saw exactly the change log, event by event."""

import shutil
import subprocess
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import (
    AgentProcess,
    ControllerProcess,
    create_join_token,
    free_port,
    kill_group,
    processes,
    wait_until,
)
from shoal.client import API, Client
from shoal.errors import AlreadyExists, ApiError
from shoal.store.store import Store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("haproxy"), reason="needs haproxy (make system-deps)"),
]
TTL = 2.0
REPLICAS = 3
AGENTS = 5
DEPLOYS = 300
NODE_CPU = 80  # every VM asks for 1 cpu: 300 VMs fit in 400, and a node can be overcommitted


def haproxy_config(port: int, backends: list[int]) -> str:
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{p} check inter 300ms fall 2 rise 1"
        for i, p in enumerate(backends)
    )
    return f"""
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
frontend api
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
"""


def leader(client: Client) -> tuple[str | None, int]:
    found = client.request("GET", f"{API}/controllerstatus")["leader"]
    return found["replica"], int(found["epoch"])


def deploy(client: Client, name: str) -> None:
    """Create the VM, retrying while the balancer's pick dies under the request."""
    spec = {"image": "sim:1", "cpu": 1, "memory": "1Gi", "disk": "1Gi"}
    body = {"metadata": {"name": name}, "spec": spec}
    for _ in range(60):
        try:
            client.create("virtualmachines", body, "default")
            return
        except AlreadyExists:
            return
        except ApiError:
            time.sleep(0.25)
    raise AssertionError(f"could not create {name}")


class Watcher(threading.Thread):
    """A watch on every VM through one replica, resumed from its last version on a break,
    until the replica is gone for good."""

    def __init__(self, client: Client, since: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.rv = str(since)
        self.seen: list[tuple[int, str, str]] = []
        self.stop = threading.Event()
        self.failed = False

    def run(self) -> None:
        breaks = 0
        while not self.stop.is_set() and breaks < 5:
            try:
                for event in self.client.watch(
                    "virtualmachines", None, resource_version=self.rv, timeout=2
                ):
                    obj = event["object"]
                    self.rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.seen.append((int(self.rv), event["type"], obj["metadata"]["name"]))
                breaks = 0
            except ApiError:
                breaks += 1  # its replica was killed (the test then ignores this watcher)
                time.sleep(0.5)
        self.failed = breaks >= 5


def test_three_replicas_lose_their_leader_twice_under_300_deploys(
    tmp_path: Path, postgres_db: str
) -> None:
    common = ["--database-url", postgres_db, "--leader-ttl", str(TTL)]
    first = ControllerProcess(tmp_path / "r0", extra_args=[*common, "--replica", "r0"])
    first.start()
    shared = ["--encryption-key-file", str(first.data_dir / "encryption.key")]
    replicas = [first]
    for i in range(1, REPLICAS):
        (tmp_path / f"r{i}").mkdir()
        shutil.copytree(first.data_dir / "tls", tmp_path / f"r{i}" / "tls")  # one CA for all
        replicas.append(
            ControllerProcess(
                tmp_path / f"r{i}", extra_args=[*common, *shared, "--replica", f"r{i}"]
            )
        )
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(port, [r.port for r in replicas]))
    balancer = subprocess.Popen(
        ["haproxy", "-f", str(config), "-db"],
        stdout=(tmp_path / "haproxy.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    agents: list[AgentProcess] = []
    store = Store(postgres_db)
    try:
        with processes(*replicas):
            for replica in replicas[1:]:
                replica.start()
            url = f"https://127.0.0.1:{port}"
            lb = Client(url, first.admin_token, ca_pem=first.ca_pem)
            wait_until(lambda: leader(lb)[0] == "r0", what="r0 leading")
            join = create_join_token(lb)
            for i in range(AGENTS):
                agents.append(
                    AgentProcess(
                        url, join, f"n{i}", tmp_path / f"agent-{i}",
                        extra_args=[
                            "--heartbeat-interval", "1", "--sim-boot-delay", "0.1",
                            "--sim-vms", "200", "--sim-cpu", str(NODE_CPU),
                            "--sim-memory", "500Gi",
                        ],
                    )
                )  # fmt: skip
            with processes(*agents):
                for agent in agents:
                    agent.start()
                wait_until(
                    lambda: len(lb.list_all("nodes", None)) == AGENTS, what="5 nodes registered"
                )
                since = store.current_rv()
                watchers = [Watcher(replica.client(), since) for replica in replicas]
                for watcher in watchers:
                    watcher.start()

                killed: list[int] = []
                names = [f"vm-{i:03d}" for i in range(DEPLOYS)]
                with ThreadPoolExecutor(max_workers=6) as threads:
                    futures = [threads.submit(deploy, lb, name) for name in names]
                    for cut in (100, 200):
                        wait_until(lambda cut=cut: sum(f.done() for f in futures) >= cut)
                        holder, epoch = leader(lb)
                        index = int(str(holder).removeprefix("r"))
                        replicas[index].kill()  # SIGKILL, mid-work
                        killed.append(index)
                        wait_until(
                            lambda epoch=epoch: leader(lb)[1] > epoch,
                            timeout=8 * TTL,
                            what=f"a new leader after {holder}",
                        )
                    for future in futures:
                        future.result()

                def all_running() -> bool:
                    vms = lb.list_all("virtualmachines", "default")
                    phases = [(v.get("status") or {}).get("phase") for v in vms]
                    return len(vms) == DEPLOYS and all(p == "Running" for p in phases)

                try:
                    wait_until(all_running, timeout=120, what="300 VMs Running")
                except AssertionError:
                    vms = lb.list_all("virtualmachines", "default")
                    phases = Counter((v.get("status") or {}).get("phase") for v in vms)
                    stuck = [v for v in vms if (v.get("status") or {}).get("phase") != "Running"]
                    raise AssertionError(
                        f"{len(vms)} VMs, {dict(phases)}; leader {leader(lb)}; "
                        f"a stuck one: {stuck[0] if stuck else None}"
                    ) from None
                log = [
                    c for c in store.changes_since(since, 1_000_000) if c.kind == "VirtualMachine"
                ]
                (alive,) = set(range(REPLICAS)) - set(killed)
                watcher = watchers[alive]
                wait_until(
                    lambda: watcher.seen and watcher.seen[-1][0] >= log[-1].rv,
                    what="the surviving replica's watch to catch up",
                )
                for each in watchers:
                    each.stop.set()

                # The surviving replica's watch saw the change log, event by event: no gap, no
                # repeat, in order.
                assert not watcher.failed
                assert watcher.seen[: len(log)] == [(c.rv, c.type, c.name) for c in log]

                # Every VM was bound once, and no node was over its cpu at any version.
                bound: dict[str, set[str]] = defaultdict(set)
                held: dict[str, set[str]] = defaultdict(set)
                for change in log:
                    node = change.node_name
                    if change.type != "DELETED" and node is not None:
                        bound[change.name].add(node)
                        held[node].add(change.name)
                        assert len(held[node]) <= NODE_CPU, f"{node} overcommitted"
                assert len(bound) == DEPLOYS
                assert all(len(nodes) == 1 for nodes in bound.values()), "a VM bound twice"
    finally:
        for agent in agents:
            agent.kill()
        kill_group(balancer)
        store.close()
