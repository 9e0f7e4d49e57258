"""The qemu backend: real VMs under QEMU, driven through QMP.

Each VM lives in its own state dir (machine.json, the qcow2 overlay on the image's disk, QEMU's
pid file, the serial log, and links to its QMP, VNC and serial-console sockets). An OCI image is
pulled into the node's cache (images.py) first, and stays pinned there while the VM exists. QEMU runs
daemonized, so it is nobody's child: VMs outlive the agent, and a restarted agent adopts them from
their state dirs exactly as it would find them in any other round.

A VM is Starting from launch until its guest answers on port 22 with an SSH banner (or, with no
port 22 forwarded, until QMP says it runs), then Running; a guest silent past the boot timeout
did not boot, and is stopped and Failed. A QEMU that dies unasked makes the VM Failed. Both carry
the last lines of the serial console in their message.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shoal.backends import processes
from shoal.backends.base import (
    Actual,
    BackendError,
    Capacity,
    ExportedDisk,
    VMState,
    connect_tcp,
)
from shoal.backends.qemu import accel as accelerators
from shoal.backends.qemu import qmp, savedstate
from shoal.backends.qemu.images import (
    PULL_FAILED,
    BaseImage,
    ImagePullFailed,
    NodeImages,
    cached_base,
    local_base,
)
from shoal.backends.qemu.machine import (
    MACHINE_FILE,
    Forward,
    HostSetup,
    Machine,
    MachineError,
    Paths,
    command,
    mac_address,
)
from shoal.model.meta import now_iso
from shoal.quantity import parse_bytes

log = logging.getLogger(__name__)

GUEST_ADDRESS = "10.0.2.15"  # the guest's address on QEMU's user-mode network
SERIAL_TAIL_LINES = 15
START_MARK = "--- shoal: starting"
ACCEL_RETRY_SECONDS = 60.0  # QEMU ran no guest at all: decide again after this long
ACCEL_RECHECK_SECONDS = 60.0  # the chosen accelerator stopped working: see if it is back
FAILURE_FILE = "failed.json"  # why the VM failed, until it is started again
# A VM made from a saved state holds it here until its first start loads it.
INCOMING_STATE = "incoming.state"
INCOMING_ENTRY = "incoming.json"
BACKGROUND_NICENESS = 10  # of QEMUs booting warm-pool entries
COLD_REASON = "booted-cold.txt"  # why a VM made from a saved state booted instead
RESTORE_TIMEOUT = 120.0
FAST_POLL = 0.02  # how often a restored guest is asked for its SSH banner


@dataclass(frozen=True)
class QemuSettings:
    state_dir: Path
    qemu: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    accelerator: str = "auto"  # auto | kvm | hvf | tcg
    max_vms: int = 8
    cpu_reserve: int = 0  # host cores kept for the host itself
    memory_reserve: int = 1 * 2**30  # bytes kept for the host itself
    cpu: int | None = None  # None: the host's cores
    memory: int | None = None  # None: the host's memory
    disk: int | None = None  # None: the free space where the state dir is
    forward_address: str = "127.0.0.1"  # where guest ports are published on the host
    # Where node-port mappings (a VM's `ports: [{guest, node}]`) listen: reachable from outside.
    node_address: str = "0.0.0.0"
    network: str = "user"  # user | bridge:<name> | tap:<name>
    boot_timeout: float = 600.0  # Starting this long without an SSH banner: Failed (BootTimeout)
    # A restored guest answers within a second or two; one that does not within this long is
    # given up on and the VM boots cold instead.
    restore_ready_timeout: float = 60.0
    stop_timeout: float = 30.0
    poll_interval: float = 0.5
    uefi_code: str | None = None
    opencore: str | None = None
    apple_osk: str | None = None
    guest_os: tuple[str, ...] = ("linux",)
    image_cache_budget: int | None = None  # bytes of OCI images kept in state_dir/images


@dataclass
class _Running:
    state: VMState
    monitor: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    restored: bool = False  # started from a saved state: asked for its banner at once


# Host ports of the VMs of every backend in this process (several nodes may share a host), held
# from create to delete whether or not QEMU has bound them yet.
_reserved_ports: set[int] = set()


def _read_failure(root: Path) -> tuple[str, str] | None:
    try:
        failure = json.loads((root / FAILURE_FILE).read_text())
        return str(failure["reason"]), str(failure["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _free_port(address: str, wanted: int, taken: set[int]) -> int:
    """wanted (0: any) if it can be bound on address and nobody here holds it."""
    bind_address = "" if address == "0.0.0.0" else address
    for _ in range(100):
        with socket.socket() as probe:
            try:
                probe.bind((bind_address, wanted))
            except OSError as error:
                raise BackendError(f"host port {wanted} on {address}: {error.strerror}") from None
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port
        if wanted:
            raise BackendError(f"host port {wanted} is taken by another VM on this node")
    raise BackendError("no free host port for the VM's port forwards")


def _release(forwards: "tuple[Forward, ...] | list[Forward]") -> None:
    for forward in forwards:
        _reserved_ports.discard(forward.host)


def _short_link(root: Path) -> Path:
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"shoal-vm-{digest}"


def _pid_alive(pid: int, vm_id: str) -> bool:
    """The process exists and is this VM's QEMU (a recycled pid is not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return f"shoal-{vm_id}".encode() in cmdline


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _take_text(path: Path) -> str:
    """A note file's text, the file gone after ("" when there is none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    path.unlink(missing_ok=True)
    return text


def _tail(path: Path, lines: int = SERIAL_TAIL_LINES) -> str:
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 8192))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    if START_MARK in text:  # only what this boot printed
        text = text.rsplit(START_MARK, 1)[1].split("\n", 1)[-1]
    kept = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


async def ssh_banner(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when host:port answers with an SSH identification line."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"SSH-")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class QemuBackend:
    name = "qemu"
    resolves_images = True

    def __init__(self, settings: QemuSettings) -> None:
        self.settings = settings
        self.vms_dir = settings.state_dir / "vms"
        self.saved_dir = settings.state_dir / "saved"  # warm-pool entries, one directory each
        self.vms_dir.mkdir(parents=True, exist_ok=True)
        self._accel: accelerators.Accelerator | None = None
        self._accel_error: str | None = None
        self._accel_failed_at = 0.0  # a failed decision is tried again after ACCEL_RETRY_SECONDS
        self._accel_lock = asyncio.Lock()
        # Set while guests no longer start under the chosen accelerator (the node says so).
        self._accel_trouble: str | None = None
        self._accel_checked_at = 0.0
        self._accel_check: asyncio.Task[None] | None = None
        self._qemu_version: str | None = None
        self._create_lock = asyncio.Lock()
        # (vm, guest port) -> loopback port of forwards added for tunnels while the VM runs.
        self._extra_forwards: dict[tuple[str, int], int] = {}
        self._creating: set[str] = set()
        self._vms: dict[str, _Running] = {}
        # VMs with no state dir yet whose image is being pulled, or failed to pull.
        self._pulls: dict[str, VMState] = {}
        self._callbacks: list[Callable[[str], None]] = []
        self._clean_leftovers()
        self.images = NodeImages(settings.state_dir / "images", settings.image_cache_budget)
        for vm_id in self._existing():
            with contextlib.suppress(BackendError):
                digest = self._machine(vm_id).image_digest
                if digest:
                    self.images.pin(vm_id, digest)

    # -- host ------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self, vm_id: str) -> None:
        for callback in self._callbacks:
            callback(vm_id)

    async def accelerator(self) -> accelerators.Accelerator:
        """The accelerator guests run under: the process's one decision (accel.decide), so every
        node of a process shares it and it never changes under a running agent. BackendError
        when QEMU runs no guest here at all."""
        async with self._accel_lock:
            retry = time.monotonic() - self._accel_failed_at > ACCEL_RETRY_SECONDS
            if self._accel is None and (self._accel_error is None or retry):
                try:
                    self._accel = await accelerators.decide(
                        self.settings.qemu, self.settings.accelerator
                    )
                except (RuntimeError, ValueError) as error:
                    self._accel_error = str(error)
                    self._accel_failed_at = time.monotonic()
            if self._accel is None:
                raise BackendError(self._accel_error or "no accelerator")
            return self._accel

    def _check_accelerator(self) -> None:
        """Find out in the background whether guests still start under the chosen accelerator:
        after a QEMU that would not start, and every ACCEL_RECHECK_SECONDS while they do not."""
        if self._accel is None or (self._accel_check and not self._accel_check.done()):
            return
        self._accel_checked_at = time.monotonic()
        self._accel_check = asyncio.create_task(self._recheck(self._accel.name))

    async def _recheck(self, name: str) -> None:
        run = await accelerators.starts_guests(self.settings.qemu, name)
        trouble = None if run.ok else f"guests no longer start under {name}: {run.why}"
        if trouble != self._accel_trouble:
            log.warning("%s", trouble or f"guests start under {name} again")
        self._accel_trouble = trouble

    async def capacity(self) -> Capacity:
        s = self.settings
        cpu = s.cpu if s.cpu is not None else max(1, (os.cpu_count() or 1) - s.cpu_reserve)
        memory = s.memory if s.memory is not None else max(0, _host_memory() - s.memory_reserve)
        disk = s.disk if s.disk is not None else shutil.disk_usage(self.vms_dir).free
        try:
            accel: accelerators.Accelerator | None = await self.accelerator()
        except BackendError:
            accel = None
        if (
            self._accel_trouble
            and time.monotonic() - self._accel_checked_at > ACCEL_RECHECK_SECONDS
        ):
            self._check_accelerator()
        return Capacity(
            cpu,
            memory,
            disk,
            s.max_vms,
            "amd64",
            "linux",
            s.guest_os,
            accel.name if accel else None,
            accel.reason if accel else self._accel_error or "",
            self._accel_trouble if accel else None,
        )

    def _clean_leftovers(self) -> None:
        """Half-made VM dirs from a create that was interrupted never become VMs, nor half-saved
        entries."""
        for path in [
            *self.vms_dir.glob(".creating-*"),
            *self.vms_dir.glob(".export-*"),
            *self.saved_dir.glob(".*.part"),
        ]:
            shutil.rmtree(path, ignore_errors=True)
        mine = str(self.vms_dir.resolve())
        for link in Path(tempfile.gettempdir()).glob("shoal-vm-*"):
            with contextlib.suppress(OSError):
                target = os.readlink(link)
                if target.startswith(mine) and not Path(target).exists():
                    link.unlink()

    def _paths(self, vm_id: str) -> Paths:
        root = self.vms_dir / vm_id
        return Paths(root, _short_link(root))

    def _link(self, paths: Paths) -> None:
        if paths.short.is_symlink() and os.readlink(paths.short) == str(paths.root):
            return
        with contextlib.suppress(FileNotFoundError):
            paths.short.unlink()
        paths.short.symlink_to(paths.root)

    def host_setup(self, accel: str) -> HostSetup:
        s = self.settings
        return HostSetup(s.qemu, accel, s.uefi_code, s.opencore, s.apple_osk)

    # -- create ----------------------------------------------------------------------------

    async def create(self, vm_id: str, spec: dict[str, Any]) -> None:
        paths = self._paths(vm_id)
        if (paths.root / MACHINE_FILE).exists():
            return
        image = spec.get("resolvedImage")
        if not isinstance(image, dict):
            raise BackendError(f"image {spec.get('image')!r}: no such Image")
        base = await self._base_image(vm_id, str(spec.get("image")), image)
        try:
            await self._create(vm_id, spec, base, paths)
        finally:
            if not (paths.root / MACHINE_FILE).exists():
                self.images.unpin(vm_id)  # only a VM that exists holds its image

    async def _base_image(self, vm_id: str, name: str, image: dict[str, Any]) -> BaseImage:
        """The files the VM is made from: the Image's local files, or its OCI image pulled into
        the node's cache (the VM is Starting with the pull's progress meanwhile)."""
        source = image.get("source") or {}
        if source.get("local"):
            return local_base(name, source["local"], image)
        reference = source.get("oci")
        if not reference:
            raise BackendError(f"image {name!r} has no source")
        state = self._pulls[vm_id] = VMState(vm_id, Actual.STARTING, message=f"pulling {reference}")

        def report(message: str) -> None:
            state.message = message

        try:
            cached = await self.images.pull(vm_id, str(reference), report)
        except ImagePullFailed as error:
            log.warning("VM %s: %s", vm_id, error)
            if self._pulls.get(vm_id) is state:
                self._pulls[vm_id] = VMState(
                    vm_id, Actual.FAILED, reason=PULL_FAILED, message=str(error)
                )
            raise
        if self._pulls.pop(vm_id, None) is not state:
            self.images.unpin(vm_id)
            raise BackendError("the VM was deleted while its image was pulled")
        return cached_base(name, cached, image)

    async def _create(
        self, vm_id: str, spec: dict[str, Any], base: BaseImage, paths: Paths
    ) -> None:
        """Make the VM's state dir (unless another create made it, or is making it)."""
        image = base.settings
        async with self._create_lock:
            if (paths.root / MACHINE_FILE).exists() or vm_id in self._creating:
                return
            if len(set(self._existing()) | self._creating) >= self.settings.max_vms:
                raise BackendError(f"this node already holds {self.settings.max_vms} VMs")
            # Bridged and tapped guests are reached at their own address: nothing to forward.
            forwards = self._allocate_ports(spec) if self.settings.network == "user" else ()
            self._creating.add(vm_id)
        staging = self.vms_dir / f".creating-{vm_id}"
        made = False
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            disk_size = spec.get("disk") or image.get("disk")
            wanted_size = parse_bytes(str(disk_size)) if disk_size else 0
            machine = Machine(
                vm_id=vm_id,
                cpu=int(spec.get("cpu") or image.get("cpu") or 1),
                memory_mib=parse_bytes(str(spec.get("memory") or image.get("memory") or "1Gi"))
                // 2**20,
                guest_os=str(spec.get("os") or image.get("os") or "linux"),
                boot=str(image.get("boot") or "disk"),
                firmware=str(image.get("firmware") or "bios"),
                kernel=base.kernel,
                initrd=base.initrd,
                cmdline=str(image.get("cmdline") or ""),
                base=base.disk,
                forwards=forwards,
                ssh_user=str(image.get("sshUser") or "root"),
                network=self.settings.network,
                image_digest=base.digest,
            )
            if spec.get("background"):
                machine = replace(machine, background=True)
            if spec.get("goldenMemory"):
                memory = str(paths.root / savedstate.MEMORY_FILE)
                machine = replace(machine, memory_file=memory, memory_shared=True)
            saved = spec.get("savedState")
            taken = None
            if saved:
                entry_dir = self._entry_dir(str(saved))
                taken = await self._take_saved_state(entry_dir, machine, staging)
            if taken is None:
                await self._new_overlay(base, staging / "disk.qcow2", wanted_size)
            else:
                machine = taken
            if machine.firmware == "uefi" or machine.guest_os == "macos":
                await self._copy_uefi_vars(staging)
            machine.save(staging)
            os.rename(staging, paths.root)
            made = True
        except OSError as error:
            raise BackendError(f"cannot create the VM's state in {self.vms_dir}: {error}") from None
        finally:
            self._creating.discard(vm_id)
            if not made:
                shutil.rmtree(staging, ignore_errors=True)
                _release(forwards)
        self._link(paths)
        self._vms[vm_id] = _Running(self._stopped_state(vm_id, machine))

    async def _new_overlay(self, base: BaseImage, disk: Path, wanted_size: int) -> None:
        base_format, base_size = base.disk_format, base.virtual_size
        if base_format is None or base_size is None:
            info = await self._image_info(base.disk)  # one read for size and format
            base_format, base_size = str(info["format"]), int(info["virtual-size"])
        await self._run(
            self.settings.qemu_img,
            "create", "-q", "-f", "qcow2", "-F", base_format, "-b", base.disk, str(disk),
            *([str(wanted_size)] if wanted_size > base_size else []),
        )  # fmt: skip

    async def _take_saved_state(
        self, entry_dir: Path, machine: Machine, staging: Path
    ) -> Machine | None:
        """Make the VM being made (staging) from a saved state, to be loaded at its first start:
        a suspended entry's disk and memory move in (it is used once); a clone golden stays, and
        the VM gets an overlay of its disk and maps its memory. The machine to save, or None
        when the entry cannot become this VM (the reason is kept for the VM's status)."""
        # A golden (it has the RAM file) serves many VMs and may back running clones: never
        # removed here, even when it cannot serve this one.
        clone = (entry_dir / savedstate.MEMORY_FILE).exists()
        try:
            entry = savedstate.Entry.load(entry_dir)
            state = entry_dir / savedstate.STATE_FILE
            problem = savedstate.mismatch(entry, machine, await self.qemu_version(), state)
            if problem is None:
                if entry.mode == "clone":
                    golden_disk = str(entry_dir / "disk.qcow2")
                    await self._run(
                        self.settings.qemu_img,
                        "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", golden_disk,
                        str(staging / "disk.qcow2"),
                    )  # fmt: skip
                    shutil.copyfile(state, staging / INCOMING_STATE)
                    memory = str(entry_dir / savedstate.MEMORY_FILE)
                    machine = replace(machine, memory_file=memory, memory_shared=False)
                else:
                    os.rename(entry_dir / "disk.qcow2", staging / "disk.qcow2")
                    os.rename(state, staging / INCOMING_STATE)
                entry.save(staging)
                os.rename(staging / savedstate.ENTRY_FILE, staging / INCOMING_ENTRY)
                return machine
        except (savedstate.SavedStateError, BackendError, OSError) as error:
            problem = str(error)
        finally:
            if not clone:
                shutil.rmtree(entry_dir, ignore_errors=True)
        (staging / COLD_REASON).write_text(f"the saved state was not used: {problem}")
        log.warning("VM %s: booting cold: the saved state was not used: %s", machine.vm_id, problem)
        return None

    async def qemu_version(self) -> str:
        """The QEMU binary's version, as its --version says it (a saved state fits only it)."""
        if self._qemu_version is None:
            out = await self._run(self.settings.qemu, "--version", timeout=30, what="QEMU")
            self._qemu_version = out.splitlines()[0].strip() if out.strip() else "unknown"
        return self._qemu_version

    @property
    def warm_start_guest_os(self) -> tuple[str, ...] | None:
        """The guest OSes whose VMs can be saved: all it runs on user networking (None); none on
        a bridge or tap, where nothing here watches a guest answer (so none would be saved)."""
        return None if self.settings.network == "user" else ()

    def _entry_dir(self, entry_id: str) -> Path:
        if not entry_id or "/" in entry_id or entry_id.startswith("."):
            raise BackendError(f"not a saved entry's id: {entry_id!r}")
        return self.saved_dir / entry_id

    def saved_entries(self) -> set[str]:
        """The entries this node holds (each a directory of saved_dir with its entry file)."""
        try:
            return {
                path.parent.name
                for path in self.saved_dir.glob(f"*/{savedstate.ENTRY_FILE}")
                if not path.parent.name.startswith(".")
            }
        except OSError:
            return set()

    def saved_entries_in_use(self) -> set[str]:
        """The goldens whose memory file a VM on this node maps (and whose disk its overlay
        stands on)."""
        used = set()
        for vm_id in self._existing():
            with contextlib.suppress(BackendError):
                memory = self._machine(vm_id).memory_file
                if memory is not None and Path(memory).parent.parent == self.saved_dir:
                    used.add(Path(memory).parent.name)
        return used

    async def discard_saved(self, entry_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._entry_dir(entry_id), True)

    async def save_state(self, vm_id: str, entry_id: str, *, clone: bool = False) -> None:
        """Save a running, ready VM as entry entry_id: its memory and devices, its disk overlay
        and its machine. With clone, the entry is a golden that many VMs start from (the VM
        must have been made with goldenMemory); its files are made read-only. The VM is gone
        afterwards, as if deleted."""
        await self.save_entry(vm_id, self._entry_dir(entry_id), clone=clone)

    async def save_entry(self, vm_id: str, dest: Path, *, clone: bool = False) -> savedstate.Entry:
        """save_state into the directory dest (made here); the entry saved."""
        paths = self._paths(vm_id)
        machine = self._machine(vm_id)
        running = self._vms.get(vm_id)
        if self._alive(vm_id, paths) is None or running is None or not running.state.ready:
            raise BackendError(f"VM {vm_id} is not running and ready: nothing to save")
        if clone and not machine.memory_shared:
            raise BackendError(f"VM {vm_id} was not made with goldenMemory: it cannot seed clones")
        staging = dest.with_name(f".{dest.name}.part")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self._unwatch(vm_id)
        try:
            version = await self.qemu_version()
            entry = await savedstate.save(paths.qmp, machine, version, staging, clone=clone)
            paths.wanted.write_text("stopped")
            pid = self._alive(vm_id, paths)
            with contextlib.suppress(qmp.QMPError):
                await qmp.execute(paths.qmp, "quit", timeout=3)
            if pid is not None and not await self._exited(vm_id, paths, 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await self._exited(vm_id, paths, 5.0)
            os.rename(paths.disk, staging / "disk.qcow2")
            if clone:
                memory = staging / savedstate.MEMORY_FILE
                os.rename(paths.root / savedstate.MEMORY_FILE, memory)
                for frozen in (memory, staging / "disk.qcow2"):
                    frozen.chmod(0o444)  # clones read them: nothing may write them again
            machine.save(staging)
            os.rename(staging, dest)
        except (savedstate.SavedStateError, OSError) as error:
            shutil.rmtree(staging, ignore_errors=True)
            await self.delete(vm_id)
            raise BackendError(f"cannot save VM {vm_id}: {error}") from None
        await self.delete(vm_id)
        return entry

    def cached_images(self) -> list[str]:
        """The references of the images in this node's cache (for the Node's status)."""
        return self.images.held()

    async def precache(self, reference: str, progress: Callable[[int, int], None]) -> None:
        await self.images.precache(reference, progress)

    def _existing(self) -> list[str]:
        return [p.name for p in self.vms_dir.iterdir() if (p / MACHINE_FILE).exists()]

    def _allocate_ports(self, spec: dict[str, Any]) -> tuple[Forward, ...]:
        """A free host port for each guest port (22 always), unique in this process and among
        the VMs on this node."""
        wanted = {22: None, **{int(p["guest"]): p.get("node") for p in spec.get("ports") or []}}
        taken = set(_reserved_ports)
        for name in self._existing():
            with contextlib.suppress(OSError, ValueError, TypeError):
                taken |= {f.host for f in Machine.load(self.vms_dir / name).forwards}
        forwards: list[Forward] = []
        try:
            for guest, node_port in sorted(wanted.items()):
                address = (
                    self.settings.forward_address
                    if node_port is None
                    else (self.settings.node_address)
                )
                port = _free_port(address, int(node_port or 0), taken)
                taken.add(port)
                _reserved_ports.add(port)
                forwards.append(Forward(guest, port, address))
        except BackendError:
            _release(forwards)
            raise
        return tuple(forwards)

    async def open_port(
        self, vm_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        machine = self._machine(vm_id)
        state = (await self.status(vm_id)).actual
        if state not in (Actual.RUNNING, Actual.STARTING, Actual.SUSPENDED):
            raise BackendError(f"the VM is {state}")
        if machine.network != "user":
            raise BackendError(
                f"the VM is on {machine.network}: reach its port {port} at its own address"
            )
        forward = next((f for f in machine.forwards if f.guest == port), None)
        if forward is not None:
            address = "127.0.0.1" if forward.address == "0.0.0.0" else forward.address
            return await connect_tcp(address, forward.host, f"port {port} of the VM")
        host = self._extra_forwards.get((vm_id, port)) or await self._forward(vm_id, port)
        return await connect_tcp("127.0.0.1", host, f"port {port} of the VM")

    async def _forward(self, vm_id: str, guest: int) -> int:
        """Publish one more guest port on the loopback, for tunnels to ports the spec didn't list
        (QEMU's user network can add forwards to a running guest)."""
        async with self._create_lock:
            if (vm_id, guest) in self._extra_forwards:
                return self._extra_forwards[(vm_id, guest)]
            port = _free_port("127.0.0.1", 0, set(_reserved_ports))
            command = f"hostfwd_add n0 tcp:127.0.0.1:{port}-:{guest}"
            try:
                reply = await qmp.execute(
                    self._paths(vm_id).qmp, "human-monitor-command", {"command-line": command}
                )
            except qmp.QMPError as error:
                raise BackendError(f"cannot forward port {guest} of the VM: {error}") from None
            if isinstance(reply, str) and reply.strip():
                raise BackendError(f"cannot forward port {guest} of the VM: {reply.strip()}")
            _reserved_ports.add(port)
            self._extra_forwards[(vm_id, guest)] = port
            return port

    def _drop_extra_forwards(self, vm_id: str) -> None:
        """Forget the forwards added to a QEMU that is gone (a new one starts without them)."""
        for key in [key for key in self._extra_forwards if key[0] == vm_id]:
            _reserved_ports.discard(self._extra_forwards.pop(key))

    async def _image_info(self, path: str) -> dict[str, Any]:
        out = await self._run(self.settings.qemu_img, "info", "--output=json", "-U", path)
        info: dict[str, Any] = json.loads(out)
        return info

    async def _copy_uefi_vars(self, directory: Path) -> None:
        code = self.settings.uefi_code
        if not code:
            raise BackendError("UEFI firmware (OVMF) is not configured on this node")
        template = Path(code).with_name(Path(code).name.replace("CODE", "VARS"))
        if not template.is_file():
            raise BackendError(f"UEFI variable store {template} is missing")
        shutil.copyfile(template, directory / "uefi-vars.fd")

    async def _run(self, *argv: str, timeout: float = 120.0, what: str | None = None) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise BackendError(f"{argv[0]} is not installed") from None
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            processes.kill(process)
            await process.wait()
            raise BackendError(
                f"{what or argv[0] + ' ' + argv[1]} took longer than {timeout:.0f}s"
            ) from None
        if process.returncode != 0:
            detail = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
            name = what or f"{Path(argv[0]).name} {argv[1]}"
            raise BackendError(f"{name} failed: {detail[-2000:]}")
        return out.decode(errors="replace")

    # -- power -----------------------------------------------------------------------------

    def _pid(self, paths: Paths) -> int | None:
        try:
            return int(paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _alive(self, vm_id: str, paths: Paths) -> int | None:
        pid = self._pid(paths)
        return pid if pid is not None and _pid_alive(pid, vm_id) else None

    async def start(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        machine = self._machine(vm_id)
        if self._alive(vm_id, paths):
            return
        accel = (await self.accelerator()).name
        self._link(paths)
        self._drop_extra_forwards(vm_id)
        with contextlib.suppress(FileNotFoundError):
            (paths.root / FAILURE_FILE).unlink()
        for stale in (paths.qmp, paths.vnc, paths.console, paths.pidfile):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        try:
            argv = command(machine, paths, self.host_setup(accel))
        except MachineError as error:
            raise BackendError(str(error)) from None
        incoming = paths.root / INCOMING_STATE
        restoring = incoming.exists()
        if restoring:
            argv += ["-incoming", "defer"]
        if machine.background:
            argv = ["nice", "-n", str(BACKGROUND_NICENESS), *argv]
        paths.wanted.write_text("running")
        with paths.serial_log.open("ab") as serial:
            how = "restoring its saved state" if restoring else "booting"
            serial.write(f"\n{START_MARK} {now_iso()} ({how}) ---\n".encode())
        try:
            await self._run(*argv, timeout=60, what="QEMU")
        except BackendError as error:
            paths.wanted.write_text("stopped")
            self._set(vm_id, Actual.FAILED, reason="QemuFailed", message=str(error))
            self._check_accelerator()  # was it the accelerator? The node will say so.
            return
        self._accel_trouble = None  # QEMU came up under it, so it works
        if restoring and not await self._restore(vm_id, paths, machine):
            await self.start(vm_id)  # the saved state is gone: boot
            return
        entry = self._vms.setdefault(vm_id, _Running(self._stopped_state(vm_id, machine)))
        entry.state = VMState(
            vm_id,
            Actual.STARTING,
            ports={f.guest: (f.address, f.host) for f in machine.forwards},
            addresses=[GUEST_ADDRESS],
            boot_time=now_iso(),
            mac=mac_address(vm_id),
            message=_take_text(paths.root / COLD_REASON),  # said at the first start only
        )
        entry.started = time.monotonic()
        entry.restored = entry.state.restored = restoring
        self._watch(vm_id)

    async def _restore(self, vm_id: str, paths: Paths, machine: Machine) -> bool:
        """Load the VM's saved state into the QEMU just started with -incoming. On failure the
        QEMU goes, and so does the state; the VM gets a fresh overlay and the reason (False)."""
        incoming = paths.root / INCOMING_STATE
        try:
            entry = savedstate.Entry.load_file(paths.root / INCOMING_ENTRY)
            await savedstate.restore(paths.qmp, incoming, entry, RESTORE_TIMEOUT)
            return True
        except savedstate.SavedStateError as error:
            problem = str(error)
        finally:
            with contextlib.suppress(FileNotFoundError):
                incoming.unlink()
            with contextlib.suppress(FileNotFoundError):
                (paths.root / INCOMING_ENTRY).unlink()
        log.warning("VM %s: booting cold: the saved state did not load: %s", vm_id, problem)
        await self._boot_cold_instead(
            vm_id, paths, machine, f"the saved state did not load: {problem}"
        )
        return False

    async def _boot_cold_instead(
        self, vm_id: str, paths: Paths, machine: Machine, reason: str
    ) -> None:
        """Give up on a restore: QEMU goes, the VM gets a fresh overlay of its image (and a
        clone its own RAM), and the reason is kept for its status. The caller starts it."""
        pid = self._alive(vm_id, paths)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await self._exited(vm_id, paths, 5.0)
        if machine.memory_file is not None and not machine.memory_shared:
            machine = replace(machine, memory_file=None)  # a clone's golden RAM: not for a boot
            machine.save(paths.root)
        size = int((await self._image_info(str(paths.disk)))["virtual-size"])
        paths.disk.unlink()
        base = BaseImage(machine.base, None, None, machine.kernel, machine.initrd, {})
        await self._new_overlay(base, paths.disk, size)
        (paths.root / COLD_REASON).write_text(reason)

    async def stop(self, vm_id: str, timeout: float | None = None) -> None:
        paths = self._paths(vm_id)
        if not paths.root.exists():
            pull = self._pulls.get(vm_id)
            if pull is not None and pull.actual == Actual.FAILED:
                del self._pulls[vm_id]  # a failed pull is over: the next create pulls again
            return
        paths.wanted.write_text("stopped")
        pid = self._alive(vm_id, paths)
        if pid is not None:
            await self._power_down(vm_id, paths, pid, timeout or self.settings.stop_timeout)
        self._unwatch(vm_id)
        for stale in (paths.qmp, paths.vnc, paths.console):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self._vms[vm_id] = _Running(self._stopped_state(vm_id, self._machine(vm_id)))

    async def _power_down(self, vm_id: str, paths: Paths, pid: int, timeout: float) -> None:
        """ACPI power button, then quit, then SIGKILL: the guest gets `timeout` to shut down."""
        with contextlib.suppress(qmp.QMPError):
            if await qmp.run_state(paths.qmp) == "paused":
                await qmp.execute(paths.qmp, "cont")
            await qmp.execute(paths.qmp, "system_powerdown")
            if await self._exited(vm_id, paths, timeout):
                return
        with contextlib.suppress(qmp.QMPError):
            await qmp.execute(paths.qmp, "quit")
        if await self._exited(vm_id, paths, 5.0):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await self._exited(vm_id, paths, 5.0)

    async def _exited(self, vm_id: str, paths: Paths, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._alive(vm_id, paths) is None:
                return True
            await asyncio.sleep(0.1)
        return self._alive(vm_id, paths) is None

    async def suspend(self, vm_id: str) -> None:
        await self._qmp_power(vm_id, "stop", Actual.SUSPENDED)

    async def resume(self, vm_id: str) -> None:
        await self._qmp_power(vm_id, "cont", Actual.RUNNING)

    async def _qmp_power(self, vm_id: str, verb: str, actual: Actual) -> None:
        paths = self._paths(vm_id)
        if self._alive(vm_id, paths) is None:
            raise BackendError(f"VM {vm_id} is not running")
        try:
            await qmp.execute(paths.qmp, verb)
        except qmp.QMPError as error:
            raise BackendError(str(error)) from None
        state = self._vms[vm_id].state if vm_id in self._vms else await self.status(vm_id)
        if actual == Actual.RUNNING and not state.ready:
            actual = Actual.STARTING  # resumed before it ever answered: still booting
        self._set(vm_id, actual)

    async def delete(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        self._unwatch(vm_id)
        self._pulls.pop(vm_id, None)
        if paths.root.exists():
            with contextlib.suppress(OSError):
                paths.wanted.write_text("stopped")
            pid = self._alive(vm_id, paths)
            if pid is not None:
                with contextlib.suppress(qmp.QMPError):
                    await qmp.execute(paths.qmp, "quit", timeout=3)
                if not await self._exited(vm_id, paths, 3.0):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    await self._exited(vm_id, paths, 5.0)
            with contextlib.suppress(BackendError):
                _release(self._machine(vm_id).forwards)
            self._drop_extra_forwards(vm_id)
            shutil.rmtree(paths.root, ignore_errors=True)
            self.images.unpin(vm_id)
        with contextlib.suppress(FileNotFoundError):
            paths.short.unlink()
        self._vms.pop(vm_id, None)

    # -- observing -------------------------------------------------------------------------

    def _machine(self, vm_id: str) -> Machine:
        try:
            return Machine.load(self._paths(vm_id).root)
        except (OSError, ValueError, TypeError):
            raise BackendError(f"no VM {vm_id} on this node") from None

    def _stopped_state(self, vm_id: str, machine: Machine) -> VMState:
        return VMState(
            vm_id,
            Actual.STOPPED,
            ports={f.guest: (f.address, f.host) for f in machine.forwards},
            addresses=[GUEST_ADDRESS],
            mac=mac_address(vm_id),
        )

    def _set(self, vm_id: str, actual: Actual, *, reason: str = "", message: str = "") -> None:
        entry = self._vms.get(vm_id)
        if entry is None:
            entry = self._vms[vm_id] = _Running(self._stopped_state(vm_id, self._machine(vm_id)))
        state = entry.state
        changed = (state.actual, state.reason, state.message) != (actual, reason, message)
        state.actual, state.reason, state.message = actual, reason, message
        if actual in (Actual.STOPPED, Actual.FAILED):
            state.ready = False
        if actual == Actual.FAILED:
            # Kept on disk, so an agent that restarts reports the failure, not a Stopped VM it
            # would start again.
            with contextlib.suppress(OSError):
                failure = {"reason": reason, "message": message}
                (self._paths(vm_id).root / FAILURE_FILE).write_text(json.dumps(failure))
        if changed:
            self._changed(vm_id)

    async def status(self, vm_id: str) -> VMState:
        paths = self._paths(vm_id)
        if not (paths.root / MACHINE_FILE).exists():
            return self._pulls.get(vm_id) or VMState(vm_id, Actual.ABSENT)
        entry = self._vms.get(vm_id)
        if entry is None:
            entry = self._vms[vm_id] = await self._adopt(vm_id, paths)
        return entry.state

    async def _adopt(self, vm_id: str, paths: Paths) -> _Running:
        """Find a VM as a previous agent left it: running, paused, stopped, or dead."""
        machine = self._machine(vm_id)
        self._link(paths)
        _reserved_ports.update(f.host for f in machine.forwards)
        state = self._stopped_state(vm_id, machine)
        entry = _Running(state)
        wanted = paths.wanted.read_text().strip() if paths.wanted.exists() else "stopped"
        if self._alive(vm_id, paths) is not None:
            try:
                run_state = await qmp.run_state(paths.qmp)
            except qmp.QMPError:
                run_state = "unknown"
            forwarded = self._ssh_forward(machine)
            ready = forwarded is not None and await ssh_banner(*forwarded)
            state.ready = ready
            state.boot_time = now_iso()
            if run_state == "paused":
                state.actual = Actual.SUSPENDED
            else:
                state.actual = Actual.RUNNING if ready or forwarded is None else Actual.STARTING
            self._vms[vm_id] = entry
            self._watch(vm_id)
            log.info("adopted VM %s (%s)", vm_id, state.actual)
        elif (failure := _read_failure(paths.root)) is not None:
            state.actual = Actual.FAILED
            state.reason, state.message = failure
        elif wanted == "running":
            state.actual = Actual.FAILED
            state.reason = "QemuExited"
            state.message = self._death_message(paths)
        return entry

    async def list(self) -> list[VMState]:
        return [await self.status(vm_id) for vm_id in self._existing()]

    @staticmethod
    def _ssh_forward(machine: Machine) -> tuple[str, int] | None:
        for forward in machine.forwards:
            if forward.guest == 22:
                return forward.address, forward.host
        return None

    def _death_message(self, paths: Paths) -> str:
        tail = _tail(paths.serial_log)
        message = "QEMU exited unexpectedly"
        return f"{message}; last serial console lines:\n{tail}" if tail else message

    def _watch(self, vm_id: str) -> None:
        entry = self._vms[vm_id]
        if entry.monitor is None or entry.monitor.done():
            entry.monitor = asyncio.create_task(self._follow(vm_id), name=f"qemu-{vm_id[:8]}")

    def _unwatch(self, vm_id: str) -> None:
        entry = self._vms.get(vm_id)
        if entry is not None and entry.monitor is not None:
            entry.monitor.cancel()
            entry.monitor = None

    async def _follow(self, vm_id: str) -> None:
        try:
            await self._follow_until_exit(vm_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # never leave a VM Starting with nobody watching it
            log.exception("VM %s: following its QEMU failed", vm_id)
            self._set(vm_id, Actual.FAILED, reason="MonitorFailed", message=str(error))

    async def _follow_until_exit(self, vm_id: str) -> None:
        """Until QEMU exits: notice the guest's SSH banner, and a QEMU that dies unasked."""
        paths = self._paths(vm_id)
        machine = self._machine(vm_id)
        forwarded = self._ssh_forward(machine)
        while True:
            current = self._vms.get(vm_id)
            fast = current is not None and current.restored and not current.state.ready
            await asyncio.sleep(FAST_POLL if fast else self.settings.poll_interval)
            entry = self._vms.get(vm_id)
            if entry is None:
                return
            state = entry.state
            if self._alive(vm_id, paths) is None:
                if paths.wanted.exists() and paths.wanted.read_text().strip() == "stopped":
                    self._set(vm_id, Actual.STOPPED)
                else:
                    log.warning("VM %s: QEMU exited unexpectedly", vm_id)
                    self._set(
                        vm_id,
                        Actual.FAILED,
                        reason="QemuExited",
                        message=self._death_message(paths),
                    )
                entry.monitor = None
                return
            if state.actual != Actual.STARTING:
                continue
            if forwarded is None:
                with contextlib.suppress(qmp.QMPError):
                    if await qmp.run_state(paths.qmp) == "running":
                        self._set(vm_id, Actual.RUNNING)
                continue
            if await ssh_banner(*forwarded):
                state.ready = True
                self._set(vm_id, Actual.RUNNING)
            elif (
                entry.restored
                and time.monotonic() - entry.started > self.settings.restore_ready_timeout
            ):
                wait = self.settings.restore_ready_timeout
                reason = f"the restored guest did not answer SSH within {wait:g}s"
                log.warning("VM %s: booting cold: %s", vm_id, reason)
                await self._boot_cold_instead(vm_id, paths, machine, reason)
                await self.start(vm_id)  # keeps this monitor, which follows the boot
                self._changed(vm_id)
            elif time.monotonic() - entry.started > self.settings.boot_timeout:
                await self._boot_timed_out(vm_id, paths)
                entry.monitor = None
                return

    async def _boot_timed_out(self, vm_id: str, paths: Paths) -> None:
        """A guest that never answered does not boot: stop its QEMU, say what the console said."""
        tail = _tail(paths.serial_log)
        paths.wanted.write_text("stopped")
        pid = self._alive(vm_id, paths)
        if pid is not None:
            await self._power_down(vm_id, paths, pid, 0.0)
        message = f"the guest did not answer SSH within {self.settings.boot_timeout:.0f}s"
        if tail:
            message += f"; last serial console lines:\n{tail}"
        log.warning("VM %s: %s", vm_id, message.splitlines()[0])
        self._set(vm_id, Actual.FAILED, reason="BootTimeout", message=message)

    # -- for `shoal vm push` ----------------------------------------------------------------

    async def export_disk(self, vm_id: str) -> ExportedDisk:
        machine = self._machine(vm_id)
        paths = self._paths(vm_id)
        # Beside the VMs (same filesystem as their disks); a leftover is removed at start.
        scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=self.vms_dir))
        paused = False
        try:
            # QEMU flushes the disk when it stops the guest: the overlay is consistent on disk
            # (as after a power cut) while it is read.
            running = self._alive(vm_id, paths) is not None
            if running and await qmp.run_state(paths.qmp) == "running":
                await qmp.execute(paths.qmp, "stop")
                paused = True
            await self._run(
                self.settings.qemu_img,
                "convert", "-U", "-O", "raw", str(paths.disk), str(scratch / "disk.raw"),
                timeout=6 * 3600,
                what="qemu-img convert",
            )  # fmt: skip
        except qmp.QMPError as error:
            shutil.rmtree(scratch, ignore_errors=True)
            raise BackendError(f"cannot pause the guest to read its disk: {error}") from None
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            if paused:
                with contextlib.suppress(qmp.QMPError):
                    await qmp.execute(paths.qmp, "cont")
        metadata = {
            "os": machine.guest_os,
            "boot": machine.boot,
            "firmware": machine.firmware,
            "cmdline": machine.cmdline,
            "sshUser": machine.ssh_user,
        }
        return ExportedDisk(
            scratch=scratch,
            disk=scratch / "disk.raw",
            metadata=metadata,
            kernel=Path(machine.kernel) if machine.kernel else None,
            initrd=Path(machine.initrd) if machine.initrd else None,
        )

    # -- for the agent's tunnel streams: log, console, display -----------------------------------------

    def serial_log(self, vm_id: str) -> Path:
        return self._paths(vm_id).serial_log

    def console_socket(self, vm_id: str) -> Path:
        return self._paths(vm_id).console

    def vnc_socket(self, vm_id: str) -> Path:
        return self._paths(vm_id).vnc
