"""Prometheus metrics at /metrics, with prometheus-client: each controller has a registry of its
own (several run in one process in tests). Events are counted where they happen (requests, the
scheduler's passes, a VM's first Running, runner pools' runners and jobs); the state of the fleet
(objects, VMs by phase, pending VMs by reason, nodes' capacity and allocation, warm pools,
leadership) is read from the store when Prometheus scrapes. docs/operations.md lists them all.
"""

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.api.auth import Principal, authenticate
from shoal.api.context import ApiContext
from shoal.api.telemetry import Metrics
from shoal.model.registry import KINDS
from shoal.quantity import parse_bytes


class FleetCollector(Collector):
    """The fleet's state, read from the store at each scrape."""

    def __init__(self, ctx: ApiContext, extra: list[Callable[[], Iterator[Metric]]]) -> None:
        self.ctx = ctx
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        store = self.ctx.store
        objects = GaugeMetricFamily(
            "shoal_objects", "Objects in the store by kind.", labels=["kind"]
        )
        for info in KINDS:
            objects.add_metric([info.kind], store.count(info.kind))
        yield objects
        yield GaugeMetricFamily(
            "shoal_resource_version", "The store's current resourceVersion.", store.current_rv()
        )
        yield GaugeMetricFamily(
            "shoal_watch_hub_resource_version",
            "The last resourceVersion this replica's watch hub has read (behind the store's: "
            "its watches lag).",
            self.ctx.hub.last_rv,
        )
        yield CounterMetricFamily(
            "shoal_watch_history_resets",
            "Times this replica found that the database had lost changes it had seen (a crash "
            "under asynchronous commit, a failover to a standby that was behind): every watch "
            "relisted.",
            self.ctx.hub.history_resets,
        )
        vms, _ = store.list_objects("VirtualMachine")
        yield from _vm_metrics(vms)
        nodes, _ = store.list_objects("Node")
        yield from _node_metrics(store, nodes)
        pools, _ = store.list_objects("WarmPool")
        yield from _warm_pool_metrics(pools)
        yield from self._leadership()
        streams = GaugeMetricFamily(
            "shoal_watch_streams",
            "Watches this replica serves, by kind ('*': all kinds, the scheduler's own).",
            labels=["kind"],
        )
        for kind, count in sorted(self.ctx.hub.watchers_by_kind().items()):
            streams.add_metric([kind], count)
        yield streams
        for source in self.extra:
            yield from source()

    def _leadership(self) -> Iterator[Metric]:
        leadership = self.ctx.leadership
        if leadership is None:
            return
        yield GaugeMetricFamily(
            "shoal_leader", "1 on the replica that leads (runs the loops), else 0.",
            1.0 if leadership.leading else 0.0,
        )  # fmt: skip
        current = leadership.lease
        yield GaugeMetricFamily(
            "shoal_leader_epoch",
            "The leader lease's epoch as this replica last read it (its fencing token).",
            float(current.epoch if current is not None else 0),
        )


def _vm_metrics(vms: list[dict[str, Any]]) -> Iterator[Metric]:
    phases: Tally[tuple[str, str]] = Tally()
    pending: Tally[str] = Tally()
    for vm in vms:
        status = vm.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        phases[(vm["metadata"]["namespace"], phase)] += 1
        if phase == "Pending" and not vm["metadata"].get("deletionTimestamp"):
            pending[_waiting_reason(status)] += 1
    by_phase = GaugeMetricFamily(
        "shoal_vms", "VMs by namespace and phase.", labels=["namespace", "phase"]
    )
    for (namespace, phase), count in sorted(phases.items()):
        by_phase.add_metric([namespace, phase], count)
    yield by_phase
    waiting = GaugeMetricFamily(
        "shoal_vms_pending",
        "Pending VMs by why they wait: the scheduler's most common node reason ('insufficient "
        "cpu', 'cordoned'...), or 'not tried yet'.",
        labels=["reason"],
    )
    for reason, count in sorted(pending.items()):
        waiting.add_metric([reason], count)
    yield waiting


def _waiting_reason(status: dict[str, Any]) -> str:
    """'0/3 nodes available: 2 insufficient cpu, 1 cordoned' -> 'insufficient cpu'."""
    message = str(status.get("message") or "")
    if status.get("reason") != "Unschedulable" or ": " not in message:
        return "not tried yet"
    first = message.split(": ", 1)[1].split(", ")[0]
    return first.split(" ", 1)[1] if " " in first else first


def _node_metrics(store: Any, nodes: list[dict[str, Any]]) -> Iterator[Metric]:
    names = [n["metadata"]["name"] for n in nodes]
    usages = store.node_usages(names) if names else {}
    capacity = GaugeMetricFamily(
        "shoal_node_capacity", "What each node offers (allocatable), by resource.",
        labels=["node", "resource"],
    )  # fmt: skip
    allocated = GaugeMetricFamily(
        "shoal_node_allocated",
        "What the VMs bound to each node reserve, by resource (saved warm-pool entries: disk).",
        labels=["node", "resource"],
    )
    for node in nodes:
        name = node["metadata"]["name"]
        alloc = (node.get("status") or {}).get("allocatable") or {}
        usage = usages[name]
        for resource, offered, used in (
            ("cpu", float(alloc.get("cpu") or 0), usage.cpu),
            ("memory", _bytes(alloc.get("memory")), usage.memory),
            ("disk", _bytes(alloc.get("disk")), usage.disk),
            ("vms", float(alloc.get("vms") or 0), usage.vms),
        ):
            capacity.add_metric([name, resource], offered)
            allocated.add_metric([name, resource], float(used))
    yield capacity
    yield allocated


def _bytes(value: Any) -> float:
    return 0.0 if value in (None, "", "0", 0) else float(parse_bytes(str(value)))


def _warm_pool_metrics(pools: list[dict[str, Any]]) -> Iterator[Metric]:
    entries = GaugeMetricFamily(
        "shoal_warmpool_entries",
        "Entries of each warm pool by state (ready, refilling, claiming).",
        labels=["namespace", "pool", "state"],
    )
    size = GaugeMetricFamily(
        "shoal_warmpool_size", "Entries each warm pool keeps.", labels=["namespace", "pool"]
    )
    for pool in pools:
        meta, status = pool["metadata"], pool.get("status") or {}
        labels = [meta["namespace"], meta["name"]]
        size.add_metric(labels, float(pool["spec"].get("size") or 0))
        for state in ("ready", "refilling", "claiming"):
            entries.add_metric([*labels, state], float(status.get(state) or 0))
    yield entries
    yield size


class MeasureRequests:
    """ASGI middleware: each HTTP request's route, code and time to its response headers, which
    the response also carries (a Server-Timing header, shown by browsers' developer tools), so a
    client can tell the server's part of a slow answer from the network's and its own.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs an extra task and a memory
    stream per request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        async def send_and_observe(message: Message) -> None:
            nonlocal observed
            if message["type"] == "http.response.start" and not observed:
                observed = True
                route = str(getattr(scope.get("route"), "path", "unmatched"))  # set on match
                seconds = time.perf_counter() - started
                method = scope["method"]
                self.metrics.requests.labels(method, route, str(message["status"])).inc()
                self.metrics.request_seconds.labels(method, route).observe(seconds)
                timing = (b"server-timing", b"app;dur=%.1f" % (seconds * 1000))
                message = {**message, "headers": [*message.get("headers", ()), timing]}
            await send(message)

        await self.app(scope, receive, send_and_observe)


def install_metrics(app: FastAPI, ctx: ApiContext) -> None:
    metrics = ctx.metrics
    app.add_middleware(MeasureRequests, metrics=metrics)
    metrics.registry.register(FleetCollector(ctx, ctx.metric_sources))

    @app.get(
        "/metrics",
        tags=["Health"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def prometheus(_caller: Annotated[Principal, Depends(authenticate)]) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
