"""The simulated backend: no guest, a settable boot delay and capacity.

Many simulated agents fit in one process, for scale tests and benchmarks. A failure can be injected
per VM (an image named `fail:<message>` fails to boot) so failure paths are testable. Warm-pool
entries are kept in memory (an agent restarted with a new backend has lost them); a VM made from
one starts in restore_delay instead of boot_delay.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.backends.base import Actual, BackendError, Capacity, VMState, connect_tcp
from shoal.backends.simguest import GuestShell
from shoal.model.meta import now_iso


@dataclass(frozen=True)
class SimSettings:
    boot_delay: float = 0.5
    restore_delay: float = 0.05
    cpu: int = 8
    memory: int = 16 * 2**30
    disk: int = 500 * 2**30
    max_vms: int = 8
    arch: str = "amd64"
    os: str = "linux"
    guest_os: tuple[str, ...] = ("linux",)
    # Tunnels to a sim VM's port P reach port P on this host's loopback: a stand-in guest for
    # tests and benchmarks of the tunnel path. Off by default.
    ports_to_host: bool = False
    # A sim VM's port 22 is an SSH server in this process whose commands run on this host
    # (simguest.py), so exec and startup scripts work on sim nodes. Off by default.
    guest_shell_dir: Path | None = None


class SimBackend:
    name = "sim"
    resolves_images = False

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = settings or SimSettings()
        self._vms: dict[str, VMState] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._boots: dict[str, asyncio.Task[None]] = {}
        self._next_port = 20000
        self._saved: dict[str, bool] = {}  # entry id -> whether it is a clone golden
        self._restoring: set[str] = set()  # VMs made from an entry, not yet started
        self._callbacks: list[Callable[[str], None]] = []
        self._shell = (
            GuestShell(self.settings.guest_shell_dir) if self.settings.guest_shell_dir else None
        )

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    async def capacity(self) -> Capacity:
        s = self.settings
        return Capacity(s.cpu, s.memory, s.disk, s.max_vms, s.arch, s.os, s.guest_os, None)

    async def create(self, vm_id: str, spec: dict[str, Any]) -> None:
        if vm_id in self._vms:
            return
        if len(self._vms) >= self.settings.max_vms:
            raise BackendError(f"this node already runs {self.settings.max_vms} VMs")
        ports = {}
        for port in spec.get("ports") or [{"guest": 22}]:
            self._next_port += 1
            ports[int(port["guest"])] = ("127.0.0.1", self._next_port)
        message = ""
        entry = spec.get("savedState")
        if entry:
            clone = self._saved.get(str(entry))
            if clone is None:
                message = f"the saved state was not used: no entry {entry} on this node"
            else:
                self._restoring.add(vm_id)
                if not clone:
                    del self._saved[str(entry)]
        self._vms[vm_id] = VMState(
            vm_id, Actual.STOPPED, message=message, ports=ports, addresses=["10.0.2.15"]
        )
        self._specs[vm_id] = spec

    def _get(self, vm_id: str) -> VMState:
        try:
            return self._vms[vm_id]
        except KeyError:
            raise BackendError(f"no VM {vm_id} on this node") from None

    async def start(self, vm_id: str) -> None:
        vm = self._get(vm_id)
        if vm.actual in (Actual.RUNNING, Actual.STARTING):
            return
        image = str(self._specs[vm_id].get("image", ""))
        if image.startswith("fail:"):
            vm.actual, vm.reason, vm.message = (
                Actual.FAILED,
                "BootFailed",
                image[5:] or "boot failed",
            )
            return
        restored = vm_id in self._restoring
        self._restoring.discard(vm_id)
        message = vm.message if vm.actual == Actual.STOPPED else ""  # a cold boot's reason, once
        vm.actual, vm.message, vm.reason, vm.restored = Actual.STARTING, message, "", restored
        self._boots[vm_id] = asyncio.create_task(self._boot(vm))

    async def _boot(self, vm: VMState) -> None:
        delay = self.settings.restore_delay if vm.restored else self.settings.boot_delay
        await asyncio.sleep(delay)
        if vm.actual == Actual.STARTING:
            vm.actual, vm.ready, vm.boot_time = Actual.RUNNING, True, now_iso()
            for callback in self._callbacks:
                callback(vm.id)

    async def wait_booted(self, vm_id: str) -> None:
        task = self._boots.get(vm_id)
        if task is not None:
            await task

    async def stop(self, vm_id: str, timeout: float = 30.0) -> None:
        vm = self._get(vm_id)
        self._cancel_boot(vm_id)
        vm.actual, vm.ready, vm.boot_time = Actual.STOPPED, False, None
        if self._shell is not None:
            self._shell.stop(vm_id)

    async def suspend(self, vm_id: str) -> None:
        vm = self._get(vm_id)
        if vm.actual != Actual.RUNNING:
            raise BackendError(f"cannot suspend a VM that is {vm.actual}")
        vm.actual, vm.ready = Actual.SUSPENDED, False

    async def resume(self, vm_id: str) -> None:
        vm = self._get(vm_id)
        if vm.actual == Actual.SUSPENDED:
            vm.actual, vm.ready = Actual.RUNNING, True

    async def delete(self, vm_id: str) -> None:
        self._cancel_boot(vm_id)
        if self._shell is not None:
            self._shell.stop(vm_id)
        self._vms.pop(vm_id, None)
        self._specs.pop(vm_id, None)
        self._restoring.discard(vm_id)

    async def save_state(self, vm_id: str, entry_id: str, *, clone: bool = False) -> None:
        vm = self._get(vm_id)
        if vm.actual != Actual.RUNNING or not vm.ready:
            raise BackendError(f"VM {vm_id} is not running and ready: nothing to save")
        await self.delete(vm_id)
        self._saved[entry_id] = clone

    def saved_entries(self) -> set[str]:
        return set(self._saved)

    def saved_entries_in_use(self) -> set[str]:
        return set()

    async def discard_saved(self, entry_id: str) -> None:
        self._saved.pop(entry_id, None)

    def _cancel_boot(self, vm_id: str) -> None:
        task = self._boots.pop(vm_id, None)
        if task is not None and not task.done():
            task.cancel()

    async def status(self, vm_id: str) -> VMState:
        return self._vms.get(vm_id) or VMState(vm_id, Actual.ABSENT)

    async def open_port(
        self, vm_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        vm = self._get(vm_id)
        if vm.actual not in (Actual.RUNNING, Actual.STARTING, Actual.SUSPENDED):
            raise BackendError(f"the VM is {vm.actual}")
        if port == 22 and self._shell is not None:
            return await self._shell.connect(vm_id)
        if not self.settings.ports_to_host:
            raise BackendError(
                "a sim VM has no guest to connect to (an agent started with --sim-ports-to-host "
                "connects tunnels to the same port on its own loopback)"
            )
        return await connect_tcp("127.0.0.1", port, f"port {port} on the sim node's loopback")

    async def list(self) -> list[VMState]:
        return list(self._vms.values())
