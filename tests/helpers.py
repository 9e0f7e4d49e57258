"""Shared test helpers: real controller and agent processes on loopback, and waiting on them."""

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from shoal.agent.agent import Agent
from shoal.client import Client, resource_path
from shoal.server import ControllerSettings, ControlPlane
from shoal.tls import fingerprint_of

SHOAL = str(Path(sys.executable).parent / "shoal")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Fatal(Exception):
    """Raised by a predicate when waiting longer cannot help (the process died)."""


def wait_until(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Fatal:
            raise
        except Exception as error:  # the thing waited for may not answer yet
            last_error = error
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}: {last_error}"
    )


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@dataclass
class ControllerProcess:
    """`shoal controller` as a real process, with TLS, on a free loopback port."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path = self.data_dir.parent / f"controller-{self.port}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                SHOAL,
                "controller",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._healthy, timeout=60, what="controller /readyz")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"controller exited: {self.log_path and self.log_path.read_text()[-3000:]}"
            )
        return httpx.get(self.url + "/readyz", verify=False, timeout=2).status_code == 200

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)
            self.process = None

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ca_pem(self) -> str:
        return (self.data_dir / "tls" / "ca.crt").read_text()

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.ca_pem.encode())

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.admin_token, ca_pem=self.ca_pem)


def another_replica(
    first: ControllerProcess, base: Path, extra_args: list[str]
) -> ControllerProcess:
    """A replica beside `first` on its database (given in extra_args): sharing its TLS CA and its
    encryption key, as replicas behind one balancer do. Not started."""
    base.mkdir(parents=True)
    shutil.copytree(first.data_dir / "tls", base / "tls")
    key = ["--encryption-key-file", str(first.data_dir / "encryption.key")]
    return ControllerProcess(base, extra_args=[*extra_args, *key])


def create_join_token(client: Client, ttl: int = 3600) -> str:
    answer = client.request("POST", resource_path("jointokens"), body={"spec": {"ttlSeconds": ttl}})
    return str(answer["status"]["token"])


@dataclass
class AgentProcess:
    """`shoal agent` (sim backend) as a real process."""

    server: str
    join_token: str
    name: str
    state_dir: Path
    replicas: int = 1
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = (self.state_dir / f"agent-{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [
                SHOAL,
                "agent",
                "--server",
                self.server,
                "--join-token",
                self.join_token,
                "--name",
                self.name,
                "--backend",
                "sim",
                "--replicas",
                str(self.replicas),
                "--state-dir",
                str(self.state_dir),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)
            self.process = None


class InProcessController:
    """A ControlPlane serving plain HTTP on loopback from a background thread."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.port = free_port()
        self.plane = ControlPlane(
            ControllerSettings(data_dir=data_dir, port=self.port, tls=False, **settings)
        )
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def ready() -> None:
            self._started.set()

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self.plane.serve(ready))

    def __enter__(self) -> "InProcessController":
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("controller did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        server = self.plane._server
        if server is not None:
            server.should_exit = True
        self._thread.join(timeout=15)

    @property
    def admin_token(self) -> str:
        return self.plane.admin_token

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.admin_token)


@contextlib.contextmanager
def processes(*items: ControllerProcess | AgentProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for item in items:
            item.kill()


@dataclass
class Cli:
    env: dict[str, str]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [SHOAL, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"shoal {' '.join(args)} exited {result.returncode}: {result.stderr}{result.stdout}"
            )
        return result

    def command(self) -> list[str]:
        return [SHOAL]

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def many(self, commands: list[list[str]]) -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda args: self.run(*args), commands))


T = TypeVar("T")


class AgentLoop:
    """An event loop in a thread, to run in-process agents while the test blocks on the API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self, agent: Agent) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(agent.run(), self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextlib.contextmanager
def agent_loop() -> Iterator[AgentLoop]:
    runner = AgentLoop()
    try:
        yield runner
    finally:
        runner.close()


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A /metrics answer parsed by prometheus-client's own parser: (sample name, labels) ->
    value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
