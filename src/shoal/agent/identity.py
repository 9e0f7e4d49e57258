"""A fresh identity for a VM deployed from a pooled VMConfig, given once its guest first
answers and before it is reported Running and Ready (and so before its startup script runs).

A VM resumed from a warm-pool entry wakes as the entry was saved: with its hostname, its clock
stopped at the save, the random state every VM from that entry shares, and its host keys. The
agent logs in through guest access (shoal.agent.guest, as exec does) and runs one script that
sets the hostname to the VM's name, sets the clock, writes fresh random bytes into the kernel's
pool, moves the network device to the VM's own MAC (when the backend gives one and the VM was
restored), and then runs the image's own hook, `/usr/lib/shoal/refresh-identity`, when the image
has one: new SSH host keys and a forced reseed of the kernel's random generator are the image's
to do (docs/warmpools.md). A VM of the same config that booted cold gets the same treatment, so
every VM of a pool is named alike whichever way it started.

Its state is the VM's FreshIdentity condition: Unknown/Running (the VM is Starting meanwhile),
then True/Refreshed or False/Failed with the reason (the VM is Running and Ready either way; the
condition says what was not done).
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from shoal.agent import guest
from shoal.agent.execstream import ExecFailed, ExecRequest, run_in_guest
from shoal.backends.base import Actual, Backend, VMState
from shoal.client import AsyncClient
from shoal.model.meta import get_condition
from shoal.tunnel import execframes as frames
from shoal.warmpool.entries import CLAIM_POOL_ANNOTATION, IDENTITY_CONDITION

log = logging.getLogger(__name__)
HOOK = "/usr/lib/shoal/refresh-identity"
ENTROPY_BYTES = 64
OUTPUT_KEPT = 2048  # bytes of the script's output kept for a failure's message
Obj = dict[str, Any]
SIM_HAS_NO_GUEST = "a sim VM has no guest of its own to refresh (its shell runs on the node)"

# Run by `sh -c` as the guest-access user (through sudo -n when that is not root). The name and
# the clock come in the environment; the entropy on stdin, so it is in no process list.
SCRIPT = r"""
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
failed=""
as_root tee /dev/urandom >/dev/null || failed="$failed entropy"  # stdin: fresh random bytes
as_root hostname "$SHOAL_VM_NAME" || failed="$failed hostname"
if [ -e /etc/hostname ]; then
  echo "$SHOAL_VM_NAME" | as_root tee /etc/hostname >/dev/null || failed="$failed /etc/hostname"
fi
# GNU and busybox date take -s @EPOCH; BSD date (macOS) sets the clock from -f %s EPOCH.
as_root date -u -s "@$SHOAL_EPOCH" >/dev/null 2>&1 \
  || as_root date -u -f %s "$SHOAL_EPOCH" >/dev/null || failed="$failed clock"
if [ -n "${SHOAL_MAC:-}" ]; then  # the VM's one NIC: the interface with a device behind it
  for dev in /sys/class/net/*; do
    [ -e "$dev/device" ] && [ "$(cat "$dev/address")" != "$SHOAL_MAC" ] || continue
    as_root ip link set dev "${dev##*/}" address "$SHOAL_MAC" || failed="$failed mac"
  done
fi
if [ -x {hook} ]; then
  as_root env SHOAL_VM_NAME="$SHOAL_VM_NAME" {hook} || failed="$failed image-hook"
fi
if [ -n "$failed" ]; then echo "not done:$failed" >&2; exit 1; fi
""".replace("{hook}", HOOK)


def condition(status: str, reason: str, message: str) -> Obj:
    return {"type": IDENTITY_CONDITION, "status": status, "reason": reason, "message": message}


def wanted(vm: Obj) -> bool:
    """Whether the VM gets a fresh identity: it was deployed from a pooled VMConfig."""
    return CLAIM_POOL_ANNOTATION in (vm["metadata"].get("annotations") or {})


class _Collect:
    """What execstream.run sends its frames to (the output's last bytes are kept), and what it
    reads stdin from: `stdin`, then its end."""

    def __init__(self, stdin: bytes) -> None:
        self.output = b""
        self._stdin = [frames.frame(frames.STDIN, stdin), frames.frame(frames.STDIN, b"")]

    async def send(self, message: bytes) -> None:
        channel, payload = frames.parse(message)
        if channel in (frames.STDOUT, frames.STDERR):
            self.output = (self.output + payload)[-OUTPUT_KEPT:]

    def __aiter__(self) -> "_Collect":
        return self

    async def __anext__(self) -> bytes:
        if self._stdin:
            return self._stdin.pop(0)
        await asyncio.Event().wait()
        raise StopAsyncIteration


class FreshIdentities:
    """Gives each VM that wants one its fresh identity once; `changed(uid)` asks the agent to
    write the VM's status."""

    def __init__(
        self, client: AsyncClient, backend: Backend, changed: Callable[[str], None]
    ) -> None:
        self.client = client
        self.backend = backend
        self.changed = changed
        self.conditions: dict[str, Obj] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def condition_of(self, vm: Obj) -> Obj | None:
        uid = vm["metadata"]["uid"]
        if uid in self.conditions:
            return self.conditions[uid]
        reported = get_condition(vm, IDENTITY_CONDITION)
        if reported is not None and reported.get("reason") == "Running":
            self.conditions[uid] = condition(
                "False", "Failed", "the agent restarted while the identity was refreshed"
            )
            return self.conditions[uid]
        return None

    def done(self, vm: Obj) -> bool:
        """Whether the VM may be reported Ready: it wants no fresh identity, or got it (or
        failed to)."""
        if not wanted(vm):
            return True
        current = self.condition_of(vm) or get_condition(vm, IDENTITY_CONDITION) or {}
        return current.get("reason") in ("Refreshed", "Failed")

    def consider(self, vm: Obj, state: VMState) -> None:
        """Start the refresh if the VM wants one, its guest answers, and it never ran."""
        uid = vm["metadata"]["uid"]
        if (
            not wanted(vm)
            or not state.ready
            or state.actual != Actual.RUNNING
            or uid in self._tasks
            or uid in self.conditions
            or get_condition(vm, IDENTITY_CONDITION) is not None
        ):
            return
        self.conditions[uid] = condition("Unknown", "Running", "giving the VM its own identity")
        self._tasks[uid] = asyncio.create_task(self._run(vm, state), name=f"identity-{uid}")
        self.changed(uid)

    async def _run(self, vm: Obj, state: VMState) -> None:
        uid = vm["metadata"]["uid"]
        env = {"SHOAL_VM_NAME": vm["metadata"]["name"], "SHOAL_EPOCH": str(int(time.time()))}
        if state.restored and state.mac:
            env["SHOAL_MAC"] = state.mac
        began = time.monotonic()
        if self.backend.name == "sim":
            # A sim VM's SSH server runs commands on the node itself: never refresh that.
            self.conditions[uid] = condition("False", "Failed", SIM_HAS_NO_GUEST)
            self._tasks.pop(uid, None)
            self.changed(uid)
            return
        try:
            sink = _Collect(os.urandom(ENTROPY_BYTES))
            request = ExecRequest(["sh", "-c", SCRIPT], stdin=True, env=env)
            code = await run_in_guest(self.backend, self.client, vm, request, sink)
            if code == 0:
                took = time.monotonic() - began
                done = condition(
                    "True", "Refreshed", f"hostname {env['SHOAL_VM_NAME']} ({took:.1f} s)"
                )
            else:
                said = sink.output.decode(errors="replace").strip().splitlines()
                done = condition(
                    "False", "Failed", f"exit code {code}" + (f": {said[-1]}" if said else "")
                )
        except (ExecFailed, guest.GuestAccessError) as failure:
            done = condition("False", "Failed", str(failure))
        except Exception as failure:  # a broken SSH connection, a guest that went away
            done = condition("False", "Failed", f"the refresh could not finish: {failure}")
        finally:
            self._tasks.pop(uid, None)
        self.conditions[uid] = done
        log.info("VM %s: fresh identity: %s", vm["metadata"]["name"], done["message"])
        self.changed(uid)

    def forget(self, uid: str) -> None:
        task = self._tasks.pop(uid, None)
        if task is not None:
            task.cancel()
        self.conditions.pop(uid, None)
