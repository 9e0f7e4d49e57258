"""`shoal dev`: the controller and local agents in one process, on SQLite, plain HTTP on loopback."""

import asyncio
import contextlib
import faulthandler
import ipaddress
import signal
import sys
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
TEST_GUEST_IMAGE = "test-guest"


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
    test_image: bool = True  # with qemu: register the built test guest as Image test-guest
    tls: bool = False  # HTTPS with a CA of its own (kubectl sends tokens only over HTTPS)


def check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(
            f"shoal dev listens on loopback only, not {host}; "
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
            tls=settings.tls,
            bookmark_interval=5.0,
        )
    )
    agents: asyncio.Task[None] | None = None
    url = plane.settings.url
    ca_pem = plane.tls.ca_pem.decode() if plane.tls is not None else None

    async def ready() -> None:
        nonlocal agents
        names = [f"dev-{i}" for i in range(1, settings.nodes + 1)]
        credentials = {}
        for name in names:
            plane.tokens.revoke_subject("Node", "", name)
            token, _ = plane.tokens.issue("Node", "", name)
            credentials[name] = Credentials(token, ca_pem)
        plan = AgentPlan(
            server=url,
            names=names,
            backend_factory=choice.factory,
            state_dir=settings.data_dir / "agents",
            heartbeat_interval=settings.heartbeat_interval,
            credentials=credentials,
        )
        agents = asyncio.create_task(run_agents(plan), name="dev-agents")
        image_hint = "test"
        if choice.name == "qemu" and settings.test_image:
            imported: str | None = await asyncio.to_thread(_import_test_guest, plane)
            image_hint = imported or image_hint
        contexts = Contexts.load()
        contexts.contexts[DEV_CONTEXT] = Context(
            server=url,
            token=plane.admin_token,
            caFingerprint=plane.tls.fingerprint if plane.tls is not None else None,
            caCert=ca_pem,
        )
        contexts.current = DEV_CONTEXT
        contexts.save()
        announce(
            f"shoal dev is serving {url}\n"
            f"  web UI: {url}/  (sign in with the admin token)\n"
            f"  backend: {choice.reason}, {settings.nodes} node(s)\n"
            f"  data dir: {settings.data_dir}  (admin token in {settings.data_dir / 'admin.token'})\n"
            f"  CLI context '{DEV_CONTEXT}' is now current: try `shoal vm deploy --image {image_hint} --wait`"
        )

    try:
        await plane.serve(ready)
    finally:
        if agents is not None:
            agents.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await agents


def _import_test_guest(plane: ControlPlane) -> str | None:
    """Register the project's test guest as Image `test-guest` when it is built (make run builds
    it), so a fresh dev cluster can boot a real VM at once. Returns the image's name."""
    from shoal.errors import AlreadyExists
    from shoal.images.local import file_entry, image_object
    from shoal.model.registry import BY_KIND
    from shoal.testguest import cached_test_guest

    guest = cached_test_guest()
    if guest is None:
        return None
    files = {
        "disk": file_entry(guest.disk),
        "kernel": file_entry(guest.kernel),
        "initrd": file_entry(guest.initrd),
    }
    image = image_object(
        TEST_GUEST_IMAGE, files, boot="kernel", cmdline=guest.cmdline, ssh_user=guest.ssh_user
    )
    try:
        info = BY_KIND["Image"]
        plane.ctx.objects.create(info, None, info.model.model_validate(image))
    except AlreadyExists:
        pass
    return TEST_GUEST_IMAGE


def print_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"Task {task.get_name()}:", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def run_controller(settings: ControllerSettings, announce: Callable[[str], None]) -> None:
    # SIGUSR1 prints every thread's stack on stderr, SIGUSR2 every asyncio task's: what a stuck
    # controller is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, print_tasks)
    plane = ControlPlane(settings)

    async def ready() -> None:
        lines = [f"shoal controller is serving {settings.url}"]
        if plane.tls is not None:
            lines.append(f"  CA fingerprint: {plane.tls.fingerprint}")
        lines.append(f"  admin token in {settings.data_dir / 'admin.token'}")
        lines.append(f"  Secrets encrypted at rest with the key in {settings.key_file}")
        announce("\n".join(lines))

    await plane.serve(ready)


Runner = Callable[[], Awaitable[None]]
