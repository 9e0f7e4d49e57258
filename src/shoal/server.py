"""The controller process: API server, watch hub, scheduler and housekeeping loops."""

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from shoal import gcpolicy
from shoal.api.app import create_app
from shoal.api.context import ApiContext
from shoal.api.hooks import CREATE_HOOKS, UPDATE_HOOKS
from shoal.api.objects import Objects
from shoal.ci.runners.reconciler import RunnerPools
from shoal.controllers.gc import GarbageCollector
from shoal.controllers.imagecache import ImageCacheController
from shoal.controllers.leadership import DEFAULT_TTL, Leadership
from shoal.controllers.namespaces import NamespaceFinalizer
from shoal.controllers.nodelifecycle import NodeLifecycle
from shoal.errors import AlreadyExists
from shoal.model.kinds import NAMESPACE_FINALIZER
from shoal.model.meta import API_VERSION
from shoal.scheduler.loop import Scheduler, SchedulerSettings
from shoal.store.sealing import KEY_FILE, load_key_file
from shoal.store.store import Store
from shoal.store.tokens import CACHE_SECONDS, TokenStore
from shoal.store.watch import WatchHub
from shoal.tls import ServerTls, ensure_server_tls
from shoal.warmpool.controller import WarmPools

log = logging.getLogger(__name__)
ADMIN_TOKEN_FILE = "admin.token"


@dataclass
class ControllerSettings:
    data_dir: Path
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8420
    tls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_sans: list[str] = field(default_factory=list)
    bookmark_interval: float = 10.0
    housekeeping_interval: float = 2.0
    event_ttl: float = 3600.0
    change_retention: int = 200_000
    # A Ready node with no heartbeat for this long goes NotReady; once NotReady this long, its VMs
    # are failed (restartPolicy Never) or rescheduled (OnNodeLost).
    node_grace_seconds: float = 40.0
    eviction_timeout_seconds: float = 300.0
    scheduling_profile: str = "pack"
    # A tunnel that carried no byte either way for this long is closed.
    tunnel_idle_timeout: float = 3600.0
    # The key Secrets are encrypted with; default <data_dir>/encryption.key, made at first start.
    # Controllers sharing one database must share this file.
    encryption_key_file: Path | None = None
    # Replicas on one database: this one's name (default: host:port:pid) and the leader lease's
    # length; the leader renews it every third of that, and a replica takes over once it lapses.
    replica: str | None = None
    leader_ttl: float = DEFAULT_TTL
    # HOST:PORT agents reach this replica at (each holds a tunnel channel to every replica);
    # default the listen address, or this host's name when it listens on every interface.
    advertise_address: str | None = None

    @property
    def advertised(self) -> str:
        if self.advertise_address:
            return self.advertise_address
        host = socket.getfqdn() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'shoal.db'}"

    @property
    def key_file(self) -> Path:
        return self.encryption_key_file or self.data_dir / KEY_FILE

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def ensure_admin_token(tokens: TokenStore, data_dir: Path) -> str:
    """The bootstrap cluster-admin token, written to <data-dir>/admin.token (0600) on first start."""
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if tokens.verify(token) is not None:
            return token
    token, _ = tokens.issue("User", "", "admin")
    write_private(path, token + "\n")
    return token


def ensure_default_namespace(store: Store) -> None:
    with contextlib.suppress(AlreadyExists):
        store.create(
            {
                "apiVersion": API_VERSION,
                "kind": "Namespace",
                "metadata": {
                    "name": "default",
                    "labels": {},
                    "annotations": {},
                    "finalizers": [NAMESPACE_FINALIZER],
                },
                "spec": {},
                "status": {"phase": "Active"},
            }
        )


# Well within the time the in-memory tokens are trusted, so requests always find them fresh.
TOKEN_REFRESH_SECONDS = CACHE_SECONDS / 2.5


class ControlPlane:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Made at first start in the data dir (0600), like the admin token and the TLS CA; a file
        # given explicitly must exist. A key other than the stored Secrets' stops the start here.
        sealer = load_key_file(settings.key_file, create=settings.encryption_key_file is None)
        self.store = Store(
            settings.store_url, change_retention=settings.change_retention, sealer=sealer
        )
        self.tokens = TokenStore(self.store)
        self.hub = WatchHub(self.store)
        self.tls: ServerTls | None = None
        if settings.tls:
            if settings.tls_cert and settings.tls_key:
                from shoal.tls import fingerprint_of

                pem = settings.tls_cert.read_bytes()
                self.tls = ServerTls(settings.tls_cert, settings.tls_key, pem, fingerprint_of(pem))
            else:
                self.tls = ensure_server_tls(settings.data_dir / "tls", settings.tls_sans)
        self.ctx = ApiContext(
            store=self.store,
            hub=self.hub,
            objects=Objects(self.store, CREATE_HOOKS, UPDATE_HOOKS),
            tokens=self.tokens,
            bookmark_interval=settings.bookmark_interval,
            ca_fingerprint=self.tls.fingerprint if self.tls else None,
            ca_pem=self.tls.ca_pem if self.tls else None,
            tunnel_idle_timeout=settings.tunnel_idle_timeout,
        )
        self.ctx.objects.status_observers.append(self.ctx.metrics.status_written)
        self.runner_pools = RunnerPools(self.store, self.ctx.objects, metrics=self.ctx.metrics)
        self.warm_pools = WarmPools(self.store, self.ctx.objects)
        self.ctx.wake_runner_pool = self.runner_pools.wake
        self.ctx.metric_sources.append(self.runner_pools.metrics)
        self.app = create_app(self.ctx)
        self.scheduler = Scheduler(
            self.store,
            self.hub,
            SchedulerSettings(default_profile=settings.scheduling_profile),
            metrics=self.ctx.metrics,
        )
        self.gc = GarbageCollector(self.store, event_ttl=settings.event_ttl)
        self.namespaces = NamespaceFinalizer(self.store, self.tokens)
        self.image_caches = ImageCacheController(self.store)
        self.node_lifecycle = NodeLifecycle(
            self.store,
            grace=settings.node_grace_seconds,
            eviction_timeout=settings.eviction_timeout_seconds,
        )
        replica = settings.replica or f"{socket.gethostname()}:{settings.port}:{os.getpid()}"
        self.leadership = Leadership(
            self.store,
            self._leader_loops,
            replica,
            settings.advertised,
            settings.leader_ttl,
        )
        self.ctx.leadership = self.leadership
        self.admin_token = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._server: uvicorn.Server | None = None

    async def start(self) -> None:
        ensure_default_namespace(self.store)
        self.admin_token = ensure_admin_token(self.tokens, self.settings.data_dir)
        await self.hub.start()
        self._tasks.append(asyncio.create_task(self.leadership.run(), name="leadership"))
        self._tasks.append(
            asyncio.create_task(
                self._every(TOKEN_REFRESH_SECONDS, self.tokens.refresh), name="token-refresh"
            )
        )

    def _leader_loops(self) -> list[Coroutine[Any, Any, None]]:
        """What only the leader runs (Leadership starts them fenced with its epoch)."""
        every = self.settings.housekeeping_interval
        return [
            self.scheduler.run(),
            self.runner_pools.run(),
            self.warm_pools.run(),
            self._every(every, self._housekeeping),
            self._every(every, self.node_lifecycle.run_once),
        ]

    def _housekeeping(self) -> None:
        self.namespaces.run_once()
        self.gc.run_once()
        self.image_caches.run_once()

    async def _every(self, seconds: float, work: Callable[[], None]) -> None:
        while True:
            try:
                await asyncio.to_thread(work)
            except Exception:
                log.exception("%s failed; retrying", getattr(work, "__name__", "loop"))
            await asyncio.sleep(seconds)

    async def serve(self, ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start everything and serve until cancelled or signalled."""
        # Requests hop between the event loop and worker threads several times; with the default
        # 5 ms GIL switch interval each hop can wait that long behind a busy thread.
        sys.setswitchinterval(0.0005)
        await self.start()
        gcpolicy.settle()
        self._tasks.append(asyncio.create_task(gcpolicy.run_full_passes(), name="gc"))
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_level="warning",
            lifespan="off",
            ssl_certfile=str(self.tls.cert_file) if self.tls else None,
            ssl_keyfile=str(self.tls.key_file) if self.tls else None,
            timeout_graceful_shutdown=2,
            # Longer than clients keep idle connections pooled, so the server is not the side that
            # closes one just as a client sends on it (uvicorn's default is 5 s).
            timeout_keep_alive=75,
            # Tunnels carry bytes that are often compressed already (SSH, VNC); deflating every
            # frame would cost more CPU than it saves.
            ws_per_message_deflate=False,
            # Frames are at most 1 MiB and a socket queues a few of them: what a slow reader makes
            # the controller hold stays bounded.
            ws_max_size=2**20,
            ws_max_queue=8,
        )
        self._server = uvicorn.Server(config)
        serving = asyncio.create_task(self._server.serve(), name="uvicorn")
        try:
            while not self._server.started:
                if serving.done():
                    await serving  # raises the bind error
                    return
                await asyncio.sleep(0.02)
            if ready is not None:
                await ready()
            await serving
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.hub.stop()
