"""Startup scripts: a VM's spec.startupScript runs in its guest once, the first time the VM is
Ready, through the same SSH path as exec (shoal.agent.execstream), with spec.env in its
environment.

Its state is the VM's StartupScript condition: Unknown/Running while it runs, True/Succeeded or
False/Failed (message: the exit code, or why it could not run) after. Its output (stdout and
stderr as they interleave) is kept on the node in a size-capped file that `shoal logs VM
--startup` reads. A VM with spec.deleteWhenScriptExits (and ephemeral) is stopped when the script
ends (the agent wants it Stopped from then on, whatever spec.powerState says), and the garbage
collector deletes it: how a one-shot runner VM cleans up after itself.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.agent import guest
from shoal.agent.execstream import ExecFailed, ExecRequest, resolve_env, run_in_guest
from shoal.backends.base import Backend
from shoal.client import AsyncClient
from shoal.model.meta import get_condition
from shoal.tunnel import execframes as frames

log = logging.getLogger(__name__)
CONDITION = "StartupScript"
LOG_CAP = 4 * 2**20  # bytes of output kept per VM; beyond it the oldest half is dropped
DROPPED = b"\n[shoal: earlier output dropped: the startup log keeps its last bytes]\n"
Obj = dict[str, Any]


class CappedLog:
    """An append-only file that keeps at most `cap` bytes, dropping its oldest half when full."""

    def __init__(self, path: Path, cap: int = LOG_CAP) -> None:
        self.path = path
        self.cap = cap
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    def write(self, data: bytes) -> None:
        with self.path.open("ab") as file:
            file.write(data)
            size = file.tell()
        if size > self.cap:
            kept = self.path.read_bytes()[-(self.cap // 2) :]
            self.path.write_bytes(DROPPED + kept)


class _LogSink:
    """What execstream.run sends its output frames to, as a startup script's log."""

    def __init__(self, log_file: CappedLog) -> None:
        self.log_file = log_file

    async def send(self, message: bytes) -> None:
        channel, payload = frames.parse(message)
        if channel in (frames.STDOUT, frames.STDERR):
            await asyncio.to_thread(self.log_file.write, payload)

    def __aiter__(self) -> "_LogSink":
        return self

    async def __anext__(self) -> bytes:
        await asyncio.Event().wait()  # a script gets no stdin
        raise StopAsyncIteration


def condition(status: str, reason: str, message: str) -> Obj:
    return {"type": CONDITION, "status": status, "reason": reason, "message": message}


class StartupScripts:
    """Starts each VM's script when it is due; `changed(uid)` asks the agent to write status."""

    def __init__(
        self,
        client: AsyncClient,
        backend: Backend,
        logs_dir: Path,
        changed: Callable[[str], None],
    ) -> None:
        self.client = client
        self.backend = backend
        self.logs_dir = logs_dir
        self.changed = changed
        self.conditions: dict[str, Obj] = {}  # uid -> the condition this agent set
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def log_path(self, uid: str) -> Path:
        return self.logs_dir / f"{uid}.log"

    def condition_of(self, vm: Obj) -> Obj | None:
        """The StartupScript condition the VM's status should carry now, if any."""
        uid = vm["metadata"]["uid"]
        if uid in self.conditions:
            return self.conditions[uid]
        reported = get_condition(vm, CONDITION)
        if reported is not None and reported.get("reason") == "Running":
            # Running as far as the status says, but not here: this agent restarted under it.
            self.conditions[uid] = condition(
                "False",
                "Failed",
                "the agent restarted while the script ran: its outcome is unknown",
            )
            return self.conditions[uid]
        return None

    def consider(self, vm: Obj) -> None:
        """Start the VM's script if it has one, its guest is Ready and it never ran."""
        uid = vm["metadata"]["uid"]
        spec, status = vm.get("spec") or {}, vm.get("status") or {}
        ready = get_condition(vm, "Ready")
        if (
            not spec.get("startupScript")
            or status.get("phase") != "Running"
            or not ready
            or ready.get("status") != "True"
            or uid in self._tasks
            or uid in self.conditions
            or get_condition(vm, CONDITION) is not None
        ):
            return
        self.conditions[uid] = condition("Unknown", "Running", "the startup script is running")
        self._tasks[uid] = asyncio.create_task(self._run(vm), name=f"startup-{uid}")
        self.changed(uid)

    async def _run(self, vm: Obj) -> None:
        uid = vm["metadata"]["uid"]
        namespace = vm["metadata"]["namespace"]
        spec = vm["spec"]
        try:
            env = await resolve_env(self.client, namespace, spec)
            request = ExecRequest(["sh", "-c", str(spec["startupScript"])], env=env)
            sink = _LogSink(CappedLog(self.log_path(uid)))
            code = await run_in_guest(self.backend, self.client, vm, request, sink)
            done = condition(
                "True" if code == 0 else "False",
                "Succeeded" if code == 0 else "Failed",
                f"exit code {code}",
            )
        except (ExecFailed, guest.GuestAccessError) as failure:
            done = condition("False", "Failed", str(failure))
        except Exception as failure:  # a broken SSH connection, a guest that went away
            done = condition("False", "Failed", f"the script could not finish: {failure}")
        finally:
            self._tasks.pop(uid, None)
        self.conditions[uid] = done
        log.info("VM %s: startup script %s", vm["metadata"]["name"], done["message"])
        self.changed(uid)  # the agent writes the condition, and stops a one-shot VM

    def finished(self, vm: Obj) -> bool:
        """Whether the VM's script has ended (succeeded or failed), as this agent or the VM's
        status knows it."""
        done = self.condition_of(vm) or get_condition(vm, CONDITION) or {}
        return done.get("reason") in ("Succeeded", "Failed")

    def forget(self, uid: str) -> None:
        """The VM is gone: stop its script and drop its log."""
        task = self._tasks.pop(uid, None)
        if task is not None:
            task.cancel()
        self.conditions.pop(uid, None)
        with contextlib.suppress(FileNotFoundError):
            self.log_path(uid).unlink()
