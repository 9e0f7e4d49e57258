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

PostgreSQL comes from the test suite's harness (tests/fixtures/postgres.py: initdb in a temp dir).
Not in the default `make bench` set: it takes about two minutes (`python -m bench replicas`).
"""

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.devserver import SHOAL, die_with_parent, free_port, kill_group
from bench.stats import median, percentile
from bench.waiting import wait
from shoal.client import API, Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures.postgres import find_bindir, start_server, stop_server

KILLS = 10
WATCH_SAMPLES = 200
TTL = 3.0
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


def _leader(client: Client) -> tuple[str | None, int]:
    found = client.request("GET", f"{API}/controllerstatus")["leader"]
    return found["replica"], int(found["epoch"])


def _failover(base: Path, replicas: list[Replica], lb: str, token: str, ca: str) -> list[float]:
    client = Client(lb, token, ca_pem=ca)
    seconds = []
    for round_ in range(KILLS):
        holder, epoch = wait(lambda: (found := _leader(client))[0] and found, 30, "a leader")
        victim = next(r for r in replicas if r.name == holder)
        survivor = Client(next(r for r in replicas if r is not victim).url, token, ca_pem=ca)
        name = f"failover-{round_}"
        spec = {"image": "sim:1", "cpu": 1, "memory": "64Mi", "disk": "64Mi"}
        victim.kill()
        killed = time.perf_counter()
        survivor.create("virtualmachines", {"metadata": {"name": name}, "spec": spec}, "default")
        wait(
            lambda survivor=survivor, name=name: survivor.get("virtualmachines", name, "default")[
                "spec"
            ].get("nodeName"),
            60,
            f"{name} placed by a new leader",
            every=0.02,
        )
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
        wait(lambda i=i: str(i) in arrived, 30, f"change {i} on the other replica", every=0.001)
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
        database = server.create_database("bench")
        first = Replica(base, "r0", database, [])
        first.start()
        tls = base / "r0" / "tls"
        shared = ["--encryption-key-file", str(base / "r0" / "encryption.key")]
        replicas = [first]
        for name in ("r1", "r2"):
            shutil.copytree(tls, base / name / "tls")
            replicas.append(Replica(base, name, database, shared))
            replicas[-1].start()
        token = (base / "r0" / "admin.token").read_text().strip()
        ca = (tls / "ca.crt").read_text()
        port = free_port()
        config = base / "haproxy.cfg"
        servers = "\n".join(
            f"    server {r.name} 127.0.0.1:{r.port} check inter 300ms fall 2 rise 1"
            for r in replicas
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
        lb = f"https://127.0.0.1:{port}"
        client = Client(lb, token, ca_pem=ca)
        join = wait(
            lambda: client.request("POST", f"{API}/jointokens", body={"spec": {"ttlSeconds": 600}}),
            30,
            "a join token through the balancer",
        )["status"]["token"]
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
    ]
