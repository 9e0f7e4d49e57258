"""`shoal dev`: the controller and local agents in one process, on SQLite, plain HTTP on loopback."""

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.agent.join import Credentials
from shoal.agent.runner import AgentPlan, run_agents
from shoal.backends.choose import BackendOptions, choose
from shoal.backends.qemu import QemuSettings
from shoal.backends.sim import SimSettings
from shoal.client import Context, Contexts
from shoal.server import ControllerSettings, ControlPlane

DEV_CONTEXT = "dev"


@dataclass
class DevSettings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8420
    backend: str = "auto"
    nodes: int = 1
    sim: SimSettings = field(default_factory=SimSettings)
    qemu: QemuSettings = field(default_factory=lambda: QemuSettings(state_dir=Path(".")))
    heartbeat_interval: float = 5.0


def check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(
            f"shoal dev serves plain HTTP and listens on loopback only, not {host}; "
            "use `shoal controller` (TLS) to serve a network"
        )


async def run_dev(settings: DevSettings, announce: Callable[[str], None]) -> None:
    check_loopback(settings.host)
    choice = await choose(
        BackendOptions(settings.backend, settings.sim, settings.qemu), settings.data_dir / "agents"
    )
    plane = ControlPlane(
        ControllerSettings(
            data_dir=settings.data_dir,
            host=settings.host,
            port=settings.port,
            tls=False,
            bookmark_interval=5.0,
        )
    )
    agents: asyncio.Task[None] | None = None
    url = plane.settings.url

    async def ready() -> None:
        nonlocal agents
        names = [f"dev-{i}" for i in range(1, settings.nodes + 1)]
        credentials = {}
        for name in names:
            plane.tokens.revoke_subject("Node", "", name)
            token, _ = plane.tokens.issue("Node", "", name)
            credentials[name] = Credentials(token, None)
        plan = AgentPlan(
            server=url,
            names=names,
            backend_factory=choice.factory,
            state_dir=settings.data_dir / "agents",
            heartbeat_interval=settings.heartbeat_interval,
            credentials=credentials,
        )
        agents = asyncio.create_task(run_agents(plan), name="dev-agents")
        contexts = Contexts.load()
        contexts.contexts[DEV_CONTEXT] = Context(server=url, token=plane.admin_token)
        contexts.current = DEV_CONTEXT
        contexts.save()
        announce(
            f"shoal dev is serving {url}\n"
            f"  backend: {choice.reason}, {settings.nodes} node(s)\n"
            f"  data dir: {settings.data_dir}  (admin token in {settings.data_dir / 'admin.token'})\n"
            f"  CLI context '{DEV_CONTEXT}' is now current: try `shoal vm deploy --image test --wait`"
        )

    try:
        await plane.serve(ready)
    finally:
        if agents is not None:
            agents.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await agents


async def run_controller(settings: ControllerSettings, announce: Callable[[str], None]) -> None:
    plane = ControlPlane(settings)

    async def ready() -> None:
        lines = [f"shoal controller is serving {settings.url}"]
        if plane.tls is not None:
            lines.append(f"  CA fingerprint: {plane.tls.fingerprint}")
        lines.append(f"  admin token in {settings.data_dir / 'admin.token'}")
        announce("\n".join(lines))

    await plane.serve(ready)


Runner = Callable[[], Awaitable[None]]
