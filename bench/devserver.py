"""`shoal dev` as the benches run it, and how they start and stop their child processes: each in
its own process group, SIGKILLed should the bench die without running its `finally`."""

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from bench.waiting import wait
from shoal.client import Client, Context

SHOAL = str(Path(sys.executable).parent / "shoal")
START_TIMEOUT = 90.0  # for shoal dev to serve
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In the child before exec (preexec_fn): SIGKILL it if the bench dies without running its
    finally. (Children are only started from the main thread while no other thread runs.)"""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kill_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the process's group (started with start_new_session) and reap it (10 s at most)."""
    if process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


class Dev:
    """`shoal dev ARGS` (ARGS: --backend and its flags) in its own process group, serving plain
    HTTP on a free loopback port, with its data in BASE/data, its output in BASE/dev.log and its
    own SHOAL_CONFIG, BASE/config.yaml (`env` runs a shoal CLI command against it)."""

    def __init__(self, base: Path, args: list[str]) -> None:
        self.base = base
        self.args = args
        self.data_dir = base / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "SHOAL_CONFIG": str(base / "config.yaml")}
        self.process: subprocess.Popen[bytes] | None = None
        self.context: Context | None = None
        self.client: Client | None = None

    @property
    def log(self) -> Path:
        return self.base / "dev.log"

    @property
    def token(self) -> str:
        """The admin token (DATA_DIR/admin.token), once it serves."""
        return (self.data_dir / "admin.token").read_text().strip()

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def start(self) -> Client:
        """Start it; once it serves (/readyz answers, the admin token and the CLI context `dev`
        are written), a client of that context, also kept as `client` (closed by kill)."""
        argv = [
            SHOAL, "dev",
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            *self.args,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        token = self.data_dir / "admin.token"
        config = Path(self.env["SHOAL_CONFIG"])

        def serving() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"shoal dev exited:\n{self._tail()}")
            # The dev context is written once it serves, maybe just after /readyz answers.
            answers = httpx.get(self.url + "/readyz").status_code == 200
            return answers and token.exists() and config.exists()

        try:
            wait(serving, START_TIMEOUT, "shoal dev to serve", every=0.1, errors=(httpx.HTTPError,))
        except TimeoutError as error:
            raise TimeoutError(f"{error}; its log:\n{self._tail()}") from None
        self.context = Context(**yaml.safe_load(config.read_text())["contexts"]["dev"])
        self.client = Client.from_context(self.context)
        return self.client

    def kill(self) -> None:
        """Close the client and SIGKILL shoal dev's process group. (The QEMUs of its qemu backend
        are daemons, out of that group: they live on.)"""
        if self.client is not None:
            self.client.close()
            self.client = None
        kill_group(self.process)
        self.process = None
