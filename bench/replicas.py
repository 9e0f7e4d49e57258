"""Controller replicas on PostgreSQL: how long the fleet goes without a leader when the leader
dies, and how long a change takes to reach a watch on another replica.

- failover: three replicas (`--leader-ttl 3`) behind HAProxy, one sim agent through it. KILLS
  times: SIGKILL the leader, create a VM on a survivor at once, and time from the kill to the VM
  bound to a node (the new leader's first placement); the killed replica is started again before
  the next round, so there are always three.
- watch delay: a watch on replica B; an object's label changed through replica A, WATCH_SAMPLES
  times; the time from sending the change to A to the event on B's watch (A's write included).
  B hears A's commit through PostgreSQL's NOTIFY (shoal.store.notify), not its one-second poll;
  the event often reaches B's watcher before A's answer reaches the writer.
- API latency under the heartbeat load, with 1 and then 3 replicas (each time on a fresh database,
  behind HAProxy with that many servers): the heartbeats bench's window (bench.heartbeats.measure)
  scaled to this bench's time: LOAD_AGENTS simulated agents heartbeating every 10 s (their API
  calls through the balancer, their tunnel channels to each replica) and the heartbeats bench's
  20 clients listing, getting and watching through the balancer for LOAD_SECONDS. Both runs have
  the same load; the heartbeat route's figures are summed over the replicas' /metrics.

PostgreSQL comes from the test suite's harness (tests/fixtures/postgres.py: initdb in a temp dir).
Not in the default `make bench` set: it takes about four minutes (`python -m bench replicas`).
"""

import operator
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench import heartbeats
from bench.devserver import SHOAL, die_with_parent, free_port, kill_group
from bench.foundation import VMS_PER_NODE
from bench.stats import median, percentile
from bench.waiting import wait
from shoal.client import API, Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures.postgres import PostgresServer, find_bindir, start_server, stop_server

KILLS = 10
WATCH_SAMPLES = 200
TTL = 3.0
# The load runs: 400 agents heartbeating every 10 s (40 heartbeats/s) and the heartbeats bench's
# 20 clients (40 requests/s), measured for 30 s; with 1, then 3 replicas.
LOAD_AGENTS = 400
LOAD_HEARTBEAT = 10.0
LOAD_SECONDS = 30.0
LOAD_REPLICAS = (1, 3)
Row = dict[str, Any]


def _say(text: str) -> None:
    print(f"[replicas {time.strftime('%H:%M:%S')}] {text}", flush=True)


class Replica:
    """`shoal controller` as one replica, on a port of its own."""

    def __init__(self, base: Path, name: str, database: str, shared: list[str]) -> None:
        self.base, self.name, self.database, self.shared = base, name, database, shared
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            SHOAL, "controller", "--data-dir", str(self.base / self.name),
            "--listen", f"127.0.0.1:{self.port}", "--database-url", self.database,
            "--replica", self.name, "--leader-ttl", str(TTL), *self.shared,
        ]  # fmt: skip
        with (self.base / f"{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        wait(
            lambda: httpx.get(self.url + "/readyz", verify=False).status_code == 200,
            60,
            f"replica {self.name} to serve",
            errors=(httpx.HTTPError,),
        )

    def kill(self) -> None:
        kill_group(self.process)
        self.process = None


def _start_replicas(base: Path, database: str, count: int, replicas: list[Replica]) -> None:
    """Start `count` replicas r0, r1, ... on `database` under `base`, appending each to
    `replicas` as it starts (for the caller to kill). Those after r0 get copies of its TLS
    directory and its encryption key."""
    first = Replica(base, "r0", database, [])
    replicas.append(first)
    first.start()
    tls = base / "r0" / "tls"
    shared = ["--encryption-key-file", str(base / "r0" / "encryption.key")]
    for i in range(1, count):
        shutil.copytree(tls, base / f"r{i}" / "tls")
        replicas.append(Replica(base, f"r{i}", database, shared))
        replicas[-1].start()


def _start_balancer(base: Path, replicas: list[Replica]) -> tuple[subprocess.Popen[bytes], str]:
    """HAProxy (TCP, round robin) in front of `replicas`: its process and its URL."""
    port = free_port()
    config = base / "haproxy.cfg"
    servers = "\n".join(
        f"    server {r.name} 127.0.0.1:{r.port} check inter 300ms fall 2 rise 1" for r in replicas
    )
    config.write_text(
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n"
        f"    timeout server 1h\nfrontend api\n    bind 127.0.0.1:{port}\n"
        f"    default_backend replicas\nbackend replicas\n    balance roundrobin\n{servers}\n"
    )
    balancer = subprocess.Popen(
        ["haproxy", "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
    )  # fmt: skip
    return balancer, f"https://127.0.0.1:{port}"


def _join_token(client: Client) -> str:
    created: dict[str, Any] = wait(
        lambda: client.request("POST", f"{API}/jointokens", body={"spec": {"ttlSeconds": 3600}}),
        30,
        "a join token through the balancer",
    )
    token: str = created["status"]["token"]
    return token


def _under_load(server: PostgresServer, base: Path, count: int) -> list[Row]:
    """The heartbeats bench's window (scaled: LOAD_AGENTS agents, LOAD_SECONDS) against `count`
    replicas on a fresh database, agents and clients through the balancer."""
    base = base / f"load-{count}"
    base.mkdir()
    database = server.create_database(f"load{count}")
    replicas: list[Replica] = []
    balancer: subprocess.Popen[bytes] | None = None
    agents: subprocess.Popen[bytes] | None = None
    clients: list[Client] = []
    try:
        _start_replicas(base, database, count, replicas)
        token = (base / "r0" / "admin.token").read_text().strip()
        ca = (base / "r0" / "tls" / "ca.crt").read_text()
        balancer, lb = _start_balancer(base, replicas)
        client = Client(lb, token, ca_pem=ca)
        clients = [client] + [Client(r.url, token, ca_pem=ca) for r in replicas]
        join = _join_token(client)
        # As in the heartbeats bench (bench.foundation.Cluster): one process simulating every
        # agent, at a lower CPU priority (the agents stand for hosts of their own).
        agents = subprocess.Popen(
            [SHOAL, "agent", "--server", lb, "--join-token", join, "--name", "sim",
             "--replicas", str(LOAD_AGENTS), "--state-dir", str(base / "agent"),
             "--sim-vms", str(VMS_PER_NODE), "--sim-cpu", "64", "--sim-memory", "256Gi",
             "--sim-boot-delay", "0", "--heartbeat-interval", str(LOAD_HEARTBEAT)],
            stdout=(base / "agent.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        os.setpriority(os.PRIO_PROCESS, agents.pid, heartbeats.AGENT_NICENESS)
        wait(
            lambda: len(client.list_all("nodes")) == LOAD_AGENTS,
            600,
            f"{LOAD_AGENTS} nodes",
            every=1.0,
        )
        _say(f"{count} replica(s): {LOAD_AGENTS} nodes joined; measuring {LOAD_SECONDS:g} s")
        load = heartbeats.measure(
            client,
            lb,
            token,
            ca,
            agents=LOAD_AGENTS,
            seconds=LOAD_SECONDS,
            metrics=lambda: [c._http.get("/metrics").text for c in clients[1:]],
        )
    finally:
        for c in clients:
            c.close()
        kill_group(agents)
        kill_group(balancer)
        for replica in replicas:
            replica.kill()
    plural = "replica" if count == 1 else "replicas"
    note = f" ({LOAD_AGENTS} agents, {heartbeats.CLIENTS} clients, {LOAD_SECONDS:g} s)"
    return heartbeats.rows(load, prefix=f"replicas load, {count} {plural}: ", note=note)


def _leader(client: Client) -> tuple[str | None, int]:
    found = client.request("GET", f"{API}/controllerstatus")["leader"]
    return found["replica"], int(found["epoch"])


def _failover(base: Path, replicas: list[Replica], lb: str, token: str, ca: str) -> list[float]:
    client = Client(lb, token, ca_pem=ca)
    seconds = []

    def led() -> tuple[str, int] | None:
        holder, epoch = _leader(client)
        return (holder, epoch) if holder else None

    for round_ in range(KILLS):
        leader = wait(led, 30, "a leader")
        assert leader is not None  # wait returns led's first truthy answer
        holder, epoch = leader
        victim = next(r for r in replicas if r.name == holder)
        survivor = Client(next(r for r in replicas if r is not victim).url, token, ca_pem=ca)
        name = f"failover-{round_}"
        spec = {"image": "sim:1", "cpu": 1, "memory": "64Mi", "disk": "64Mi"}
        victim.kill()
        killed = time.perf_counter()
        survivor.create("virtualmachines", {"metadata": {"name": name}, "spec": spec}, "default")

        def placed(survivor: Client = survivor, name: str = name) -> bool:
            return bool(survivor.get("virtualmachines", name, "default")["spec"].get("nodeName"))

        wait(placed, 60, f"{name} placed by a new leader", every=0.02)
        seconds.append(time.perf_counter() - killed)
        _say(f"kill {round_ + 1}/{KILLS}: {holder} (epoch {epoch}) -> placed in "
             f"{seconds[-1]:.2f}s")  # fmt: skip
        survivor.delete("virtualmachines", name, "default")
        victim.start()
        survivor.close()
    client.close()
    return seconds


def _watch_delay(a: Client, b: Client) -> list[float]:
    a.create("vmconfigs", {"metadata": {"name": "probe"}, "spec": {"image": "sim:1"}}, "default")
    arrived: dict[str, float] = {}
    ready = threading.Event()

    def follow() -> None:
        rv = b.get("vmconfigs", "probe", "default")["metadata"]["resourceVersion"]
        ready.set()
        for event in b.watch("vmconfigs", "default", resource_version=rv, timeout=300):
            value = (event["object"]["metadata"].get("labels") or {}).get("n")
            if value is not None:
                arrived[value] = time.perf_counter()
            if len(arrived) >= WATCH_SAMPLES:
                return

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    ready.wait(30)
    time.sleep(1.0)
    delays = []
    for i in range(WATCH_SAMPLES):
        sent = time.perf_counter()
        a.patch("vmconfigs", "probe", {"metadata": {"labels": {"n": str(i)}}}, "default")
        seen = partial(operator.contains, arrived, str(i))
        wait(seen, 30, f"change {i} on the other replica", every=0.001)
        delays.append(arrived[str(i)] - sent)
        time.sleep(0.01)
    return delays


def run() -> list[Row]:
    bindir = find_bindir()
    if bindir is None or not shutil.which("haproxy"):
        raise RuntimeError("the replicas bench needs PostgreSQL and haproxy (make system-deps)")
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-replicas-"))
    server = start_server(bindir)
    replicas: list[Replica] = []
    balancer: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    try:
        try:
            database = server.create_database("bench")
            _start_replicas(base, database, 3, replicas)
            token = (base / "r0" / "admin.token").read_text().strip()
            ca = (base / "r0" / "tls" / "ca.crt").read_text()
            balancer, lb = _start_balancer(base, replicas)
            client = Client(lb, token, ca_pem=ca)
            join = _join_token(client)
            agent = subprocess.Popen(
                [SHOAL, "agent", "--server", lb, "--join-token", join, "--name", "n1",
                 "--backend", "sim", "--state-dir", str(base / "agent"),
                 "--heartbeat-interval", "1", "--sim-boot-delay", "0.05"],
                stdout=(base / "agent.log").open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
            wait(lambda: client.list("nodes")["items"], 60, "the node")
            failover = _failover(base, replicas, lb, token, ca)
            a = Client(replicas[0].url, token, ca_pem=ca)
            b = Client(replicas[1].url, token, ca_pem=ca)
            delays = [d * 1000 for d in _watch_delay(a, b)]
        finally:
            kill_group(agent)
            kill_group(balancer)
            for replica in replicas:
                replica.kill()
        loads: list[Row] = []
        for count in LOAD_REPLICAS:
            loads += _under_load(server, base, count)
    finally:
        stop_server(server)
        shutil.rmtree(base, ignore_errors=True)
    return [
        {"name": "replicas failover kill to placement p50", "value": median(failover), "unit": "s"},
        {"name": "replicas failover kill to placement max", "value": max(failover), "unit": "s"},
        {"name": "replicas watch delay across replicas p50", "value": median(delays), "unit": "ms"},
        {
            "name": "replicas watch delay across replicas p99",
            "value": percentile(delays, 99),
            "unit": "ms",
        },
        *loads,
    ]
