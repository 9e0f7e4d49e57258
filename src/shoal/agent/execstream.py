"""Exec on the agent: a command run in the guest over SSH (shoal.agent.guest), its stdin, stdout,
stderr and exit code carried as exec frames (shoal.tunnel.execframes) on a stream to the
controller. Output is sent as the command writes it, so a long job's log is live.

The command gets the VM's spec.env (values, or keys of the VM's Secrets) in its environment. It
is set by `export` in the shell command sshd runs, not through SSH environment requests, which
most sshds refuse; the values are in no process list on the host.
"""

import asyncio
import base64
import contextlib
import json
import logging
import shlex
import signal
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from shoal.agent import guest
from shoal.backends.base import Backend
from shoal.client import AsyncClient
from shoal.errors import ApiError
from shoal.tunnel import execframes as frames

log = logging.getLogger(__name__)
CHUNK = 64 * 1024


class ExecFailed(Exception):
    """The command could not be run; reason is a short CamelCase word for programs."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ExecRequest:
    command: list[str]
    tty: bool = False
    stdin: bool = False
    width: int = 80
    height: int = 24
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @staticmethod
    def of(request: dict[str, Any]) -> "ExecRequest":
        command = request.get("command")
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(part, str) for part in command)
        ):
            raise ExecFailed("exec needs a command", "BadCommand")
        return ExecRequest(
            command=command,
            tty=bool(request.get("tty")),
            stdin=bool(request.get("stdin")),
            width=int(request.get("width") or 80),
            height=int(request.get("height") or 24),
        )

    def shell_command(self) -> str:
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in self.env.items())
        return exports + shlex.join(self.command)


async def resolve_env(client: AsyncClient, namespace: str, spec: dict[str, Any]) -> dict[str, str]:
    """The VM's spec.env as name -> value, reading the Secrets it names (node credential)."""
    env: dict[str, str] = {}
    secrets: dict[str, dict[str, Any]] = {}
    for var in spec.get("env") or []:
        if var.get("value") is not None:
            env[var["name"]] = str(var["value"])
            continue
        ref = (var.get("valueFrom") or {}).get("secretKeyRef") or {}
        name, key = str(ref.get("name")), str(ref.get("key"))
        if name not in secrets:
            try:
                secrets[name] = (await client.get("secrets", name, namespace)).get("data") or {}
            except ApiError as error:
                raise ExecFailed(
                    f"env {var['name']}: cannot read Secret {name}: {error.message}",
                    "SecretUnavailable",
                ) from None
        if key not in secrets[name]:
            raise ExecFailed(
                f"env {var['name']}: Secret {name} has no key {key}", "SecretUnavailable"
            )
        env[var["name"]] = base64.b64decode(secrets[name][key]).decode(errors="replace")
    return env


def exit_code(completed: asyncssh.SSHCompletedProcess) -> int:
    """The command's exit status; 128 + N for a command killed by signal N, as shells say."""
    if completed.exit_status is not None and completed.exit_status >= 0:
        return int(completed.exit_status)
    name = completed.exit_signal[0] if completed.exit_signal else ""
    with contextlib.suppress(KeyError):
        return 128 + int(signal.Signals["SIG" + name])
    return 255


async def run(connection: guest.GuestConnection, request: ExecRequest, stream: Any) -> int:
    """Run the command and carry its streams; returns its exit code."""
    process = await connection.ssh.create_process(
        request.shell_command(),
        encoding=None,
        request_pty="force" if request.tty else False,
        term_type="xterm-256color" if request.tty else None,
        term_size=(request.width, request.height) if request.tty else None,
    )
    if not request.stdin:
        process.stdin.write_eof()

    async def output(reader: asyncssh.SSHReader[bytes], channel: int) -> None:
        while data := await reader.read(CHUNK):
            await stream.send(frames.frame(channel, data))

    async def input() -> None:
        async for message in stream:
            if not isinstance(message, bytes):
                continue
            channel, payload = frames.parse(message)
            if channel == frames.STDIN:
                if not payload:
                    process.stdin.write_eof()
                else:
                    process.stdin.write(payload)
                    await process.stdin.drain()
            elif channel == frames.RESIZE:
                size = json.loads(payload)
                process.change_terminal_size(int(size["width"]), int(size["height"]))
        process.terminate()  # the client went away: the command goes too
        await asyncio.Event().wait()

    typing = asyncio.create_task(input())
    try:
        await asyncio.gather(
            output(process.stdout, frames.STDOUT), output(process.stderr, frames.STDERR)
        )
        completed = await process.wait()
    finally:
        typing.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await typing
    return exit_code(completed)


async def run_in_guest(
    backend: Backend, client: AsyncClient, vm: dict[str, Any], request: ExecRequest, stream: Any
) -> int:
    """Log into the VM's guest (as its guest access says) and run request there; its exit code.
    Raises guest.GuestAccessError, ExecFailed, or what a broken SSH connection raises."""
    credentials = await guest.credentials_for(client, vm)
    connection = await guest.connect(backend, str(vm["metadata"]["uid"]), credentials)
    try:
        return await run(connection, request, stream)
    finally:
        await connection.close()


async def serve_exec(
    stream: Any, backend: Backend, client: AsyncClient, request: dict[str, Any]
) -> None:
    """An exec stream, past its READY frame: run the command, end with its STATUS frame."""
    vm = {
        "metadata": {
            "namespace": request.get("namespace"),
            "name": request.get("name"),
            "uid": request.get("vm"),
        },
        "spec": request.get("spec") or {},
    }
    try:
        wanted = ExecRequest.of(request)
        env = await resolve_env(client, str(request.get("namespace")), vm["spec"])
        wanted = ExecRequest(**{**wanted.__dict__, "env": env})
        code = await run_in_guest(backend, client, vm, wanted, stream)
        status: dict[str, Any] = {"exitCode": code}
    except ExecFailed as failure:
        status = {"error": str(failure), "reason": failure.reason}
    except guest.GuestAccessError as failure:
        status = {"error": str(failure), "reason": "GuestAccessFailed"}
    except (asyncssh.Error, OSError) as failure:
        status = {
            "error": f"the guest's SSH connection broke: {failure}",
            "reason": "GuestAccessFailed",
        }
    with contextlib.suppress(Exception):
        await stream.send(frames.json_frame(frames.STATUS, status))
        await stream.close()
