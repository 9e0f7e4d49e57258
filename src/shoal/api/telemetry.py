"""The controller's metrics registry and the event metrics its parts observe (prometheus-client;
shoal.api.metrics serves them with the fleet's state)."""

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shoal.model.meta import parse_iso

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# From seconds (a warm pool's resume) to many minutes (a macOS boot behind an image pull).
DEPLOY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
FIRST_RUNS_KEPT = 200_000  # VMs whose first Running was counted (so a restart is not)


class Metrics:
    """The controller's metrics registry and the event metrics its parts observe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "shoal_http_requests",
            "HTTP requests by method, route and code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "shoal_http_request_duration_seconds",
            "Time to the response's first byte, by method and route.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.deploy_to_running = Histogram(
            "shoal_vm_deploy_to_running_seconds",
            "From a VM's creation to its first Running (resumed from a warm pool or booted).",
            ["namespace"],
            buckets=DEPLOY_BUCKETS,
            registry=self.registry,
        )
        self.scheduling_seconds = Histogram(
            "shoal_scheduler_pass_duration_seconds",
            "A scheduling pass that found VMs to place: read, decide and bind.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.scheduling_attempts = Counter(
            "shoal_scheduler_attempts",
            "VMs the scheduler tried to place, by result: bound, unschedulable (fits no node "
            "now) or refused (the binder found its snapshot stale; retried at once).",
            ["result"],
            registry=self.registry,
        )
        self.tunnels_open = Gauge(
            "shoal_tunnels_open",
            "Tunnels (port-forward, exec, console, VNC) this replica carries, by stream.",
            ["stream"],
            registry=self.registry,
        )
        self.tunnel_bytes = Counter(
            "shoal_tunnel_bytes",
            "Bytes carried by tunnels, by stream and direction (to the guest or to the client).",
            ["stream", "direction"],
            registry=self.registry,
        )
        self.boot_seconds = Histogram(
            "shoal_vm_boot_seconds",
            "From a VM's start on its node to its guest answering, as its agent reports them, "
            "by node and how it started (booted, or resumed from a warm-pool entry).",
            ["node", "start"],
            buckets=DEPLOY_BUCKETS,
            registry=self.registry,
        )
        self.pull_seconds = Histogram(
            "shoal_image_pull_duration_seconds",
            "Image pulls into nodes' caches, from the first report of the pull to the image "
            "cached, to within a heartbeat.",
            ["node"],
            buckets=DEPLOY_BUCKETS,
            registry=self.registry,
        )
        self.pull_bytes = Counter(
            "shoal_image_pull_bytes",
            "Bytes of the image pulls done into nodes' caches (as their agents report them).",
            ["node"],
            registry=self.registry,
        )
        self._first_runs: set[str] = set()
        self._pulls: dict[tuple[str, str], tuple[float, int]] = {}  # (node, image): since, bytes

    def histogram(self, name: str, help_text: str, labels: list[str], buckets: Any) -> Histogram:
        """A histogram of another part of the controller (runner pools), in this registry."""
        return Histogram(name, help_text, labels, buckets=buckets, registry=self.registry)

    def status_written(
        self, kind: str, before: dict[str, Any] | None, after: dict[str, Any]
    ) -> None:
        """A status was written (Objects.status_observers): a VM's boot and first Running, a
        node's image pulls."""
        if kind == "Node":
            self._node_status(after)
            return
        if kind != "VirtualMachine" or (after.get("status") or {}).get("phase") != "Running":
            return
        if (before or {}).get("phase") == "Running":
            return
        status = after.get("status") or {}
        if status.get("bootTime") and after["spec"].get("nodeName"):
            resumed = "warmpools.shoal.dev/entry" in (after["metadata"].get("annotations") or {})
            booted = parse_iso(status["bootTime"]).timestamp()
            self.boot_seconds.labels(
                after["spec"]["nodeName"], "resumed" if resumed else "booted"
            ).observe(max(0.0, time.time() - booted))
        meta = after["metadata"]
        if meta["uid"] in self._first_runs:
            return
        if len(self._first_runs) >= FIRST_RUNS_KEPT:
            self._first_runs.clear()
        self._first_runs.add(meta["uid"])
        created = parse_iso(meta["creationTimestamp"]).timestamp()
        self.deploy_to_running.labels(meta["namespace"]).observe(max(0.0, time.time() - created))

    def _node_status(self, node: dict[str, Any]) -> None:
        """A pull reported in a node's status, then gone with its image cached, is done."""
        name = node["metadata"]["name"]
        status = node.get("status") or {}
        now = time.time()
        pulling = set()
        for pull in status.get("imagePulls") or []:
            key = (name, str(pull.get("image")))
            pulling.add(key)
            since, _ = self._pulls.get(key, (now, 0))
            self._pulls[key] = (since, int(pull.get("totalBytes") or pull.get("bytes") or 0))
        cached = set(status.get("cachedImages") or [])
        for key in [k for k in self._pulls if k[0] == name and k not in pulling]:
            since, size = self._pulls.pop(key)
            if key[1] in cached:
                self.pull_seconds.labels(name).observe(now - since)
                self.pull_bytes.labels(name).inc(size)
