"""The API under the load of many agents: 1,000 simulated nodes heartbeating every 10 s (each also
holding its watch open) while 20 clients list, get and watch, each one request every half second
(open loop: 40 requests/s beside the 100 heartbeats/s). Reports per-route latency percentiles as
the clients see them (request sent to answer received; the clients' parse of the largest answer
on its own), the heartbeat route's p99 from the controller's /metrics histogram, and the
heartbeats served in the measured window.

It measures the steady state: the clients start once every agent has joined and heartbeated from
its heartbeat loop, and the VMs they list and watch are running.

`measure` runs that window against any controller (the replicas bench runs it against one and
three replicas on PostgreSQL, through a balancer); `run` is this bench: one controller on SQLite.
"""

import gc
import multiprocessing
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.foundation import Cluster, _percentile
from shoal import jsoncodec
from shoal.client import Client, resource_path
from shoal.model.meta import now_iso

AGENTS = 1_000
CLIENTS = 20
SECONDS = 60.0
REQUEST_INTERVAL = 0.5  # each client: one list, get or watch every half second
VMS = 50  # what the clients list and watch
# The simulated agents stand for a thousand hosts: on this machine their one process would take
# the CPU the controller needs, so it runs at a lower priority. The heartbeats it sends in the
# measured minute are counted and reported, to show the load was all there.
AGENT_NICENESS = 10


def _buckets(metrics: str, route: str, method: str) -> list[tuple[float, int]]:
    """A route's latency histogram from /metrics: (upper bound in seconds, cumulative count),
    read with prometheus-client's parser."""
    buckets: list[tuple[float, int]] = []
    for family in text_string_to_metric_families(metrics):
        if family.name != "shoal_http_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_bucket")
                and labels.get("route") == route
                and labels.get("method") == method
            ):
                buckets.append((float(labels["le"]), int(sample.value)))
    return sorted(buckets)


HEARTBEAT_ROUTE = "/apis/shoal.dev/v1/nodes/{name}/status"


def _summed_buckets(metrics: list[str], route: str, method: str) -> list[tuple[float, int]]:
    """A route's histogram summed over several controllers' /metrics (one per replica)."""
    summed: dict[float, int] = {}
    for text in metrics:
        for bound, count in _buckets(text, route, method):
            summed[bound] = summed.get(bound, 0) + count
    return sorted(summed.items())


def _count(metrics: list[str], route: str, method: str = "PATCH") -> int:
    """How many requests a route has answered, from /metrics (summed over replicas)."""
    buckets = _summed_buckets(metrics, route, method)
    return buckets[-1][1] if buckets else 0


def _histogram_p99(before: list[str], after: list[str], route: str, method: str) -> float | None:
    """The smallest bucket bound holding 99% of a route's requests between two /metrics readings
    (Prometheus-style, coarse; summed over replicas): those of the measured window, not of the
    fleet joining."""
    start = dict(_summed_buckets(before, route, method))
    buckets = [
        (bound, count - start.get(bound, 0))
        for bound, count in _summed_buckets(after, route, method)
    ]
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= 0.99 * total:
            return bound * 1000
    return None


def _wait_for_heartbeats(client: Client, since: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = client.list_all("nodes")
        if all((n.get("status") or {}).get("lastHeartbeatTime", "") > since for n in nodes):
            return
        time.sleep(1.0)
    raise TimeoutError("the agents did not all heartbeat")


def _wait_for_running(client: Client, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vms = client.list("virtualmachines", "default")["items"]
        if sum((vm.get("status") or {}).get("phase") == "Running" for vm in vms) == count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the {count} VMs did not all start")


CALLS = ("list nodes", "list vms", "get node", "watch vms (first event)")
PARSE = "list nodes: the client's parse of the page"


def _client(
    index: int, url: str, token: str, ca: str, stop: float, agents: int
) -> dict[str, list[float]]:
    """One client: a list, get or watch every REQUEST_INTERVAL until stop (open loop, as people
    and dashboards behave: a slow server meets the same load instead of less of it).

    A call's latency is the route's: from sending the request to holding the whole answer (for
    a watch, its first event), as the server's own histograms and Kubernetes' API latency SLIs
    count it. Turning the answer into objects is the client's work, on the client's CPU (here
    shared with everything else); for the largest answer it is timed and reported on its own.
    Returns the latencies in milliseconds by call."""
    # For one minute refcounting frees enough: no collector pause inside a timing.
    gc.disable()
    http = Client(url, token, ca_pem=ca)._http
    node = f"sim-{1 + index * 37 % agents}"
    timings: dict[str, list[float]] = {name: [] for name in (*CALLS, PARSE)}

    def received(path: str, **params: Any) -> bytes:
        response = http.get(path, params=params)
        response.raise_for_status()
        content: bytes = response.content
        return content

    def first_event() -> None:
        params = {"watch": "1", "timeoutSeconds": "5"}
        with http.stream("GET", resource_path("virtualmachines", "default"), params=params) as r:
            r.raise_for_status()
            next(line for line in r.iter_lines() if line.strip())

    due = time.monotonic() + random.uniform(0, REQUEST_INTERVAL)
    turn = index
    while due < stop:
        time.sleep(max(0.0, due - time.monotonic()))
        name = CALLS[turn % len(CALLS)]
        started = time.perf_counter()
        if name == "list nodes":
            page = received(resource_path("nodes"), limit=500)
            done = time.perf_counter()
            jsoncodec.loads(page)
            timings[PARSE].append((time.perf_counter() - done) * 1000)
        elif name == "list vms":
            received(resource_path("virtualmachines", "default"))
        elif name == "get node":
            received(resource_path("nodes", None, node))
        else:
            first_event()
        timings[name].append((time.perf_counter() - started) * 1000)
        turn += 1
        due += REQUEST_INTERVAL
    return timings


@dataclass
class Load:
    """What one window under the heartbeat load measured."""

    timings: dict[str, list[float]]  # by call (CALLS and PARSE), in ms, as the clients saw them
    heartbeats_per_second: float  # heartbeats the controller(s) served in the window
    heartbeat_p99: float | None  # ms, the heartbeat route's bucket bound holding 99%


def measure(
    client: Client,
    url: str,
    token: str,
    ca: str,
    *,
    agents: int,
    seconds: float,
    metrics: Callable[[], list[str]],
) -> Load:
    """The steady-state window: once `agents` simulated agents (sim-1..sim-N, already joined and
    heartbeating) have all heartbeated from their heartbeat loop and VMS VMs run, CLIENTS client
    processes list, get and watch through `url` for `seconds`. `metrics` reads /metrics of every
    controller serving (one text per replica): the heartbeat route's figures are summed over
    them."""
    # Measure the steady state, not the fleet joining or the VMs starting: every agent has
    # registered, opened its watch and tunnel, and heartbeated once more from its heartbeat
    # loop, and the VMs the clients list and watch are running.
    _wait_for_heartbeats(client, since=now_iso())
    for i in range(VMS):
        client.create(
            "virtualmachines",
            {
                "metadata": {"name": f"hb-{i}"},
                "spec": {"image": "sim:1", "cpu": 1, "memory": "1Gi"},
            },
            "default",
        )
    _wait_for_running(client, VMS)
    timings: dict[str, list[float]] = {name: [] for name in (*CALLS, PARSE)}
    stop = time.monotonic() + seconds
    metrics_before = metrics()
    window_started = time.monotonic()
    # Each client is a process of its own, as twenty people or dashboards are: in one process,
    # twenty threads would wait on each other's turn at the interpreter (and its garbage
    # collector) and count that wait as the server's.
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(CLIENTS, mp_context=fork) as pool:
        futures = [pool.submit(_client, i, url, token, ca, stop, agents) for i in range(CLIENTS)]
        for future in futures:
            for name, values in future.result().items():
                timings[name] += values
    metrics_after = metrics()
    window = time.monotonic() - window_started
    served = _count(metrics_after, HEARTBEAT_ROUTE) - _count(metrics_before, HEARTBEAT_ROUTE)
    return Load(
        timings=timings,
        heartbeats_per_second=served / window,
        heartbeat_p99=_histogram_p99(metrics_before, metrics_after, HEARTBEAT_ROUTE, "PATCH"),
    )


def rows(load: Load, prefix: str = "", note: str = "") -> list[dict[str, Any]]:
    """A window's rows: each call's p50 (its name followed by `note`) and p99, the heartbeats
    served per second and the heartbeat route's p99, every name after `prefix`."""
    found: list[dict[str, Any]] = []
    for name, values in load.timings.items():
        found.append(
            {"name": f"{prefix}{name} p50{note}", "value": statistics.median(values), "unit": "ms"}
        )
        found.append(
            {"name": f"{prefix}{name} p99", "value": _percentile(values, 0.99), "unit": "ms"}
        )
    found.append(
        {
            "name": f"{prefix}heartbeats served per second",
            "value": load.heartbeats_per_second,
            "unit": "/s",
        }
    )
    if load.heartbeat_p99 is not None:
        found.append(
            {
                "name": f"{prefix}heartbeat PATCH p99 (server, bucket bound)",
                "value": load.heartbeat_p99,
                "unit": "ms",
            }
        )
    return found


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            cluster.start_with(agents=AGENTS, heartbeat=10.0, agent_niceness=AGENT_NICENESS)
            client = cluster.client
            load = measure(
                client,
                cluster.url,
                cluster.token,
                cluster.ca,
                agents=AGENTS,
                seconds=SECONDS,
                metrics=lambda: [client._http.get("/metrics").text],
            )
            return rows(load, note=f" ({AGENTS} agents, {CLIENTS} clients)")
        finally:
            cluster.stop()
