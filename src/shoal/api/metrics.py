"""Prometheus metrics at /metrics: requests by route and code, their latency, objects by kind."""

import time
from collections import defaultdict
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.api.auth import Principal, authenticate
from shoal.api.context import ApiContext
from shoal.model.registry import KINDS

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """One Prometheus histogram with a label set per series."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.name, self.help, self.bounds = name, help_text, buckets
        self.series: dict[tuple[tuple[str, str], ...], list[int]] = {}
        self.sums: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.series.setdefault(key, [0] * (len(self.bounds) + 1))
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                counts[index] += 1
        counts[-1] += 1
        self.sums[key] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.series.items()):
            labels = ",".join(f'{k}="{v}"' for k, v in key)
            prefix = f"{labels}," if labels else ""
            for bound, count in zip(self.bounds, counts, strict=False):
                lines.append(f'{self.name}_bucket{{{prefix}le="{bound}"}} {count}')
            lines.append(f'{self.name}_bucket{{{prefix}le="+Inf"}} {counts[-1]}')
            lines.append(f"{self.name}_sum{{{labels}}} {self.sums[key]:.6f}")
            lines.append(f"{self.name}_count{{{labels}}} {counts[-1]}")
        return lines


class RequestMetrics:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = defaultdict(
            lambda: [0] * (len(BUCKETS) + 1)
        )
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        self.counts[(method, route, code)] += 1
        key = (method, route)
        self.sums[key] += seconds
        buckets = self.buckets[key]
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                buckets[index] += 1
        buckets[-1] += 1

    def render(self) -> list[str]:
        lines = [
            "# HELP shoal_http_requests_total HTTP requests by method, route and code.",
            "# TYPE shoal_http_requests_total counter",
        ]
        for (method, route, code), count in sorted(self.counts.items()):
            lines.append(
                f'shoal_http_requests_total{{method="{method}",route="{route}",code="{code}"}} {count}'
            )
        lines += [
            "# HELP shoal_http_request_duration_seconds Time to the response's first byte.",
            "# TYPE shoal_http_request_duration_seconds histogram",
        ]
        for (method, route), buckets in sorted(self.buckets.items()):
            labels = f'method="{method}",route="{route}"'
            for bound, count in zip(BUCKETS, buckets, strict=False):
                lines.append(
                    f'shoal_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} {count}'
                )
            lines.append(
                f'shoal_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {buckets[-1]}'
            )
            lines.append(
                f"shoal_http_request_duration_seconds_sum{{{labels}}} {self.sums[(method, route)]:.6f}"
            )
            lines.append(f"shoal_http_request_duration_seconds_count{{{labels}}} {buckets[-1]}")
        return lines


class MeasureRequests:
    """ASGI middleware: each HTTP request's route, code and time to its response headers, which
    the response also carries (a Server-Timing header, shown by browsers' developer tools), so a
    client can tell the server's part of a slow answer from the network's and its own.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs an extra task and a memory
    stream per request.
    """

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
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
                route = scope.get("route")  # set by the router once it matched
                seconds = time.perf_counter() - started
                self.metrics.observe(
                    scope["method"],
                    str(getattr(route, "path", "unmatched")),
                    int(message["status"]),
                    seconds,
                )
                timing = (b"server-timing", b"app;dur=%.1f" % (seconds * 1000))
                message = {**message, "headers": [*message.get("headers", ()), timing]}
            await send(message)

        await self.app(scope, receive, send_and_observe)


def install_metrics(app: FastAPI, ctx: ApiContext) -> None:
    metrics = RequestMetrics()
    app.add_middleware(MeasureRequests, metrics=metrics)

    @app.get(
        "/metrics", tags=["Health"], response_class=PlainTextResponse, summary="Prometheus metrics"
    )
    def prometheus(_caller: Annotated[Principal, Depends(authenticate)]) -> PlainTextResponse:
        lines = metrics.render()
        lines += [
            "# HELP shoal_objects Objects in the store by kind.",
            "# TYPE shoal_objects gauge",
        ]
        for info in KINDS:
            lines.append(f'shoal_objects{{kind="{info.kind}"}} {ctx.store.count(info.kind)}')
        lines += [
            "# HELP shoal_resource_version The store's current resourceVersion.",
            "# TYPE shoal_resource_version gauge",
            f"shoal_resource_version {ctx.store.current_rv()}",
        ]
        for source in ctx.metric_sources:
            lines += source()
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
