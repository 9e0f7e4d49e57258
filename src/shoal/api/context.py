"""What every route needs, hung on app.state.ctx."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from prometheus_client.metrics_core import Metric

from shoal.api.objects import Objects
from shoal.api.telemetry import Metrics
from shoal.store.store import Store
from shoal.store.tokens import TokenStore
from shoal.store.watch import WatchHub
from shoal.tunnel.broker import Broker


@dataclass
class ApiContext:
    store: Store
    hub: WatchHub
    objects: Objects
    tokens: TokenStore
    bookmark_interval: float = 10.0
    ca_fingerprint: str | None = None
    ca_pem: bytes | None = None
    ready: bool = True
    broker: Broker = field(default_factory=Broker)
    tunnel_idle_timeout: float = 3600.0
    extra: dict[str, object] = field(default_factory=dict)
    # Syncs a RunnerPool now (namespace, name): what a CI system's webhook delivery does.
    wake_runner_pool: Callable[[str, str], None] = lambda namespace, name: None
    # The metrics registry, and more metrics read at each scrape (runner pools' gauges).
    metrics: Metrics = field(default_factory=Metrics)
    metric_sources: list[Callable[[], Iterator[Metric]]] = field(default_factory=list)
    # Which replica this is and whether it leads (shoal.controllers.leadership.Leadership).
    leadership: Any = None


def get_ctx(request: Request) -> ApiContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx
