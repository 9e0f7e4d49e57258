"""Running one or many agents in this process (many: simulated nodes for scale tests)."""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shoal import gcpolicy
from shoal.agent.agent import Agent, AgentSettings
from shoal.agent.join import Credentials, join, load_credentials
from shoal.backends.base import Backend
from shoal.client import REQUEST_SLOTS, AsyncClient, ssl_context
from shoal.errors import ApiError

log = logging.getLogger(__name__)


@dataclass
class AgentPlan:
    server: str
    names: list[str]
    backend_factory: Callable[[str], Backend]
    state_dir: Path
    join_token: str | None = None
    heartbeat_interval: float = 10.0
    labels: dict[str, str] = field(default_factory=dict)
    # Credentials handed over directly (shoal dev), skipping the join exchange.
    credentials: dict[str, Credentials] = field(default_factory=dict)


async def _credentials(plan: AgentPlan, name: str, pinned_ca: str | None = None) -> Credentials:
    if name in plan.credentials:
        return plan.credentials[name]
    if plan.join_token is None:
        saved = load_credentials(plan.state_dir / name)
        if saved is None:
            raise ValueError(f"node {name} has no saved credential: pass --join-token")
        return saved
    while True:
        try:
            return await join(
                plan.server, plan.join_token, name, plan.state_dir / name, pinned_ca=pinned_ca
            )
        except ApiError as error:
            if error.code in (401, 403):
                raise
            log.warning("node %s: cannot join yet: %s", name, error.message)
            await asyncio.sleep(2)


async def run_agents(plan: AgentPlan) -> None:
    """Run every agent of the plan until cancelled.

    Each agent has its own small pool of connections for requests, as an agent on its own host
    would: httpx's pool does work quadratic in its connections on every request, so one pool
    shared by a thousand simulated agents spends milliseconds per request on bookkeeping. They
    share a bound on requests in flight, and one pool for their watch streams, which stay open and
    must not hold the connections requests wait for.
    """
    first = await _credentials(plan, plan.names[0])
    joining = asyncio.Semaphore(16)

    async def credentials(name: str) -> Credentials:
        async with joining:
            return await _credentials(plan, name, first.ca_pem)

    rest = await asyncio.gather(*(credentials(name) for name in plan.names[1:]))
    verify = ssl_context(first.ca_pem)
    # Idle connections are kept across heartbeats (the server keeps them for 75 s), so an agent
    # does not pay a TLS handshake per heartbeat.
    requests = httpx.Limits(
        max_connections=4,
        max_keepalive_connections=2,
        keepalive_expiry=max(30.0, 3 * plan.heartbeat_interval),
    )
    streams = httpx.Limits(
        max_connections=len(plan.names) + 4, max_keepalive_connections=len(plan.names) + 4
    )
    slots = asyncio.Semaphore(REQUEST_SLOTS)
    async with (
        contextlib.AsyncExitStack() as stack,
        httpx.AsyncClient(verify=verify, timeout=30, limits=streams) as watch_http,
    ):
        agents = []
        for name, creds in zip(plan.names, [first, *rest], strict=True):
            http = await stack.enter_async_context(
                httpx.AsyncClient(verify=verify, timeout=30, limits=requests)
            )
            client = AsyncClient(
                plan.server,
                creds.token,
                ca_pem=first.ca_pem,
                http=http,
                watch_http=watch_http,
                slots=slots,
            )
            settings = AgentSettings(
                node_name=name,
                heartbeat_interval=plan.heartbeat_interval,
                labels=plan.labels,
                logs_dir=plan.state_dir / name / "startup-logs",
            )
            agents.append(Agent(client, plan.backend_factory(name), settings))
        gcpolicy.settle()
        await asyncio.gather(gcpolicy.run_full_passes(), *(agent.run() for agent in agents))
