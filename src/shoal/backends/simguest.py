"""A sim VM's stand-in guest for exec and startup scripts: an SSH server in the agent's own
process (asyncssh, on one end of a socketpair) whose commands run as local processes, `sh -c`,
in a directory of their own per VM. Opt-in (`--sim-guest-shell`): whatever a startup script or
an exec asks then runs on the agent's host as the agent's user, so it is for tests and
benchmarks (runner pools on sim nodes), never for a node people share.

Any login is accepted: the server is reached only through the backend's open_port, which only
the agent calls."""

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import asyncssh

CHUNK = 64 * 1024


class _AnyLogin(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication needed


class GuestShell:
    """The guests of one sim backend: one working directory and process group set per VM."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._key = asyncssh.generate_private_key("ssh-ed25519")
        self._groups: dict[str, set[int]] = {}
        self._handshakes: set[asyncio.Future[asyncssh.SSHServerConnection]] = set()

    async def connect(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream to this VM's SSH server, as open_port(vm, 22) gives one."""
        ours, theirs = socket.socketpair()
        workdir = self.root / vm_id
        workdir.mkdir(parents=True, exist_ok=True)

        async def run(process: asyncssh.SSHServerProcess[bytes]) -> None:
            await self._run(vm_id, workdir, process)

        # run_server returns once the handshake is done, which needs the other end: not awaited.
        handshake = asyncio.ensure_future(
            asyncssh.run_server(
                theirs,
                server_host_keys=[self._key],
                server_factory=_AnyLogin,
                process_factory=run,
                encoding=None,
            )
        )
        self._handshakes.add(handshake)
        handshake.add_done_callback(self._handshakes.discard)
        return await asyncio.open_connection(sock=ours)

    async def _run(
        self, vm_id: str, workdir: Path, process: asyncssh.SSHServerProcess[bytes]
    ) -> None:
        child = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            process.command or "sh",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workdir,
            env={**os.environ, "HOME": str(workdir)},
            start_new_session=True,
        )
        group = self._groups.setdefault(vm_id, set())
        group.add(child.pid)
        assert child.stdin and child.stdout and child.stderr

        async def feed() -> None:
            assert child.stdin is not None
            with contextlib.suppress(Exception):
                while data := await process.stdin.read(CHUNK):
                    child.stdin.write(data)
                    await child.stdin.drain()
            with contextlib.suppress(Exception):
                child.stdin.close()

        async def pump(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
            while data := await source.read(CHUNK):
                sink.write(data)

        feeding = asyncio.create_task(feed())
        try:
            await asyncio.gather(
                pump(child.stdout, process.stdout), pump(child.stderr, process.stderr)
            )
            code = await child.wait()
        finally:
            feeding.cancel()
            group.discard(child.pid)
            if child.returncode is None:
                _kill_group(child.pid)
        process.exit(code if code >= 0 else 128 - code)

    def stop(self, vm_id: str) -> None:
        """The VM stopped: its processes go with it."""
        for pid in self._groups.pop(vm_id, set()):
            _kill_group(pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
