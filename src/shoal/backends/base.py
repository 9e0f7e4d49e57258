"""The hypervisor backend interface the agent drives.

A backend knows VMs by an id the agent gives it (the VM's uid) and reports what it sees; it never
talks to the controller. Every method is idempotent where that makes sense (deleting an absent VM
is fine), because the agent's reconcile may run twice.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class Actual(StrEnum):
    ABSENT = "Absent"
    STOPPED = "Stopped"  # created (disk exists), not running
    STARTING = "Starting"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    FAILED = "Failed"


@dataclass(frozen=True)
class Capacity:
    cpu: int
    memory: int  # bytes
    disk: int  # bytes
    vms: int
    arch: str = "amd64"
    os: str = "linux"
    guest_os: tuple[str, ...] = ("linux",)
    accelerator: str | None = None
    accelerator_reason: str = ""  # why this accelerator (or why there is none)
    accelerator_failure: str | None = None  # set while guests no longer start under it


@dataclass
class VMState:
    id: str
    actual: Actual
    message: str = ""
    reason: str = ""
    # guest port -> (host address, host port)
    ports: dict[int, tuple[str, int]] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)
    boot_time: str | None = None
    ready: bool = False  # the guest answers (SSH banner for real guests)
    restored: bool = False  # it runs from a saved state (a warm-pool entry), not a boot
    mac: str | None = None  # its network device's MAC, when the backend sets one


class BackendError(Exception):
    """An operation failed in a way the VM's status should report."""


class Backend(Protocol):
    name: str
    # True: create() wants spec["resolvedImage"], the spec of the Image the VM names.
    resolves_images: bool

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call callback(vm_id) whenever a VM's state changes on its own (boot done, crash)."""
        ...

    async def capacity(self) -> Capacity: ...

    async def create(self, vm_id: str, spec: dict[str, Any]) -> None: ...

    async def start(self, vm_id: str) -> None: ...

    async def stop(self, vm_id: str, timeout: float = 30.0) -> None: ...

    async def suspend(self, vm_id: str) -> None: ...

    async def resume(self, vm_id: str) -> None: ...

    async def delete(self, vm_id: str) -> None: ...

    async def status(self, vm_id: str) -> VMState: ...

    async def list(self) -> list[VMState]: ...

    async def open_port(
        self, vm_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to the guest's port, made on this host (what tunnels carry).

        Raises BackendError with a reason a person can act on when the port cannot be reached."""
        ...


@runtime_checkable
class SavesState(Protocol):
    """A backend that saves a running VM (memory, devices and disk) as a warm-pool entry, and
    makes VMs from entries: create's spec["savedState"] names the entry (its id),
    spec["goldenMemory"] makes a VM that can be saved as a clone golden, and spec["background"]
    marks a VM booted only to be saved (run at a lower priority where the backend can). A VM whose entry
    cannot be used boots cold instead, its status message saying why."""

    async def save_state(self, vm_id: str, entry_id: str, *, clone: bool = False) -> None:
        """Save the running, ready VM as entry entry_id; the VM is gone after, as if deleted.
        Raises BackendError when it cannot (the VM is gone then too)."""
        ...

    def saved_entries(self) -> set[str]:
        """The ids of the entries this node holds."""
        ...

    def saved_entries_in_use(self) -> set[str]:
        """The entries VMs on this node still need (clone goldens their memory and disk map)."""
        ...

    async def discard_saved(self, entry_id: str) -> None:
        """Remove an entry's files (nothing happens if it is not there)."""
        ...


@runtime_checkable
class HasSerialLog(Protocol):
    """A backend that keeps each VM's serial console output in a file."""

    def serial_log(self, vm_id: str) -> Path: ...


@runtime_checkable
class HasDisplay(Protocol):
    """A backend that serves each VM's display as VNC (RFB) on a unix socket."""

    def vnc_socket(self, vm_id: str) -> Path: ...


@runtime_checkable
class HasConsole(Protocol):
    """A backend that serves each VM's serial console, both ways, on a unix socket."""

    def console_socket(self, vm_id: str) -> Path: ...


@dataclass(frozen=True)
class ExportedDisk:
    """A VM's disk as one raw file (read while the guest was paused or stopped), and what an
    image made of it needs: kernel and initrd for direct kernel boot, and the image metadata
    (os, arch, boot, firmware, cmdline, sshUser)."""

    scratch: Path  # a directory of the backend's, the caller removes it when done
    disk: Path
    metadata: dict[str, Any]
    kernel: Path | None = None
    initrd: Path | None = None


@runtime_checkable
class HasDiskExport(Protocol):
    """A backend that can copy a VM's disk out (for `shoal vm push`)."""

    async def export_disk(self, vm_id: str) -> ExportedDisk:
        """Write the VM's disk, as raw, into a new scratch directory on the node's disk; a
        running guest is paused meanwhile and resumed after. Raises BackendError when the VM
        cannot be read (the scratch directory is gone then)."""
        ...


async def connect_tcp(
    host: str, port: int, what: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """open_connection with the failure as a BackendError naming what was dialed."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, TimeoutError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "timed out"
        raise BackendError(f"cannot connect to {what}: {reason}") from None
