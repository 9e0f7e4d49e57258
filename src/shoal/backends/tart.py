"""The tart backend: macOS and Linux guests on Apple-silicon hosts, through the `tart` CLI.

Every VM is the tart VM `shoal-<vm_id>`; the backend never touches a tart VM without that prefix.
How the Backend operations map to tart's commands:

- `create`: `tart clone IMAGE shoal-<id>` (IMAGE a local VM or an OCI reference; clone pulls it
  when needed), then `tart set shoal-<id> --cpu N --memory MB [--disk-size GB]`. Memory is in MiB
  (what tart calls megabytes), the disk in GB of 10^9 bytes as tart counts them, rounded up.
  `--disk-size` is passed only when it grows the disk: tart refuses to shrink one. A VM that
  already exists is left as it is (its settings are applied again while it is stopped).
- `start`: `tart run shoal-<id> --no-graphics` (plus `--suspendable` for macOS guests, so that
  `tart suspend` can save them) as a background process in its own session, its output in
  `<state_dir>/<id>/run.log`, its pid in `<state_dir>/<id>/run.json`. The VM is Starting until
  `tart ip shoal-<id> --wait N` prints an address; then Running with that address, and ready once
  the guest's SSH port answers with an `SSH-` banner.
- `stop`: `tart stop shoal-<id> --timeout T` (tart sends the run process SIGINT, then SIGKILL after
  T seconds). On a suspended VM, tart stop discards the saved state.
- `suspend`: `tart suspend shoal-<id>` (macOS 14+ hosts, macOS guests only: tart cannot save a
  Linux guest, and a failed save ends its `tart run`); the run process saves the VM's state and
  exits, and the backend waits until `tart list` shows it suspended.
- `resume`: `tart run shoal-<id>` again, which restores the saved state.
- `delete`: stop it if it runs, `tart delete shoal-<id>`, remove its state dir. Absent is fine.
- `status`/`list`: `tart list --format json` (its `State` is running, stopped or suspended) plus
  the state dir: a VM whose `tart run` exited although nobody asked it to stop or suspend is
  Failed, with the last lines of its log in the message.

The state dir keeps, per VM: `spec.json` (the spec create got, for the guest's os and ports),
`expected` (running, stopped or suspended: what the backend last asked for), `run.json` (pid and
launch time of the last `tart run`), `run.log`, `boot.json` (address, ready, boot time). A
restarted agent adopts running VMs from it: they are Running with the address recorded at boot,
and a watcher polls their pid to notice when they exit.

Short tart commands run through `asyncio.create_subprocess_exec` (never a shell) with timeouts.
`tart run` is started with `subprocess.Popen` instead: asyncio's subprocess transport kills a child
that is still running when the transport is closed or collected, which would take every VM down
with the agent.

The guest is reached at its own IP (tart's shared NAT network, or softnet): the port map sends
every guest port to (guest IP, same port); a host port asked for in the spec is not forwarded.
"""

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.backends import processes
from shoal.backends.base import Actual, BackendError, Capacity, VMState, connect_tcp
from shoal.model.meta import now_iso
from shoal.quantity import parse_bytes

log = logging.getLogger(__name__)

PREFIX = "shoal-"
# A warm-pool entry: a suspended tart VM put aside under this prefix (not PREFIX: it is no VM of
# this node's until a claim renames it to one).
SAVED_PREFIX = "shoalsaved-"
COLD_REASON = "booted-cold.txt"  # why a VM made from an entry booted instead (said once)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_GB = 1000**3  # tart's --disk-size unit
_MB = 2**20  # tart's --memory unit (it multiplies by 1024 * 1024)
_LOG_LINES = 15
_DETAIL_CHARS = 2000


@dataclass(frozen=True)
class TartSettings:
    """How the tart backend runs. Sizes are bytes; times are seconds."""

    state_dir: Path
    tart: str = "tart"  # the tart executable: a path, or a name looked up on PATH
    max_vms: int = 2  # Apple's macOS licence allows 2 macOS guests per host
    cpu: int | None = None  # host cores; None: os.cpu_count()
    memory: int | None = None  # host memory; None: from sysconf
    disk: int | None = None  # disk offered; None: size of the filesystem holding tart's VMs
    cpu_reserve: int = 1  # kept for the host, subtracted from cpu
    memory_reserve: int = 2 * 2**30  # kept for the host, subtracted from memory
    guest_os: tuple[str, ...] = ("macos", "linux")
    ssh_port: int = 22  # the guest port probed for an SSH banner
    suspendable: bool = True  # run macOS guests with --suspendable so that suspend works
    tart_home: Path | None = None  # exported as TART_HOME when set
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment for tart
    command_timeout: float = 60.0  # list, set, ip, delete, suspend
    clone_timeout: float = 7200.0  # clone may pull tens of GB
    ip_wait: int = 5  # seconds each `tart ip --wait` may take
    boot_timeout: float = 600.0  # from `tart run` to an IP address, else Failed
    launch_grace: float = 30.0  # a live run process counts as starting for this long
    probe_interval: float = 2.0  # between SSH banner probes
    probe_timeout: float = 5.0  # for one probe
    poll_interval: float = 1.0  # how often a watcher checks its run process
    suspend_timeout: float = 300.0  # for the VM's state to be saved


def vm_name(vm_id: str) -> str:
    return PREFIX + vm_id


async def ssh_banner(host: str, port: int, timeout: float) -> str | None:
    """The SSH identification line a server at host:port sends, or None (none within timeout)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                # RFC 4253 lets a server send other lines before its identification string.
                for _ in range(8):
                    line = await reader.readline()
                    if not line:
                        return None
                    if line.startswith(b"SSH-"):
                        return line.decode("ascii", "replace").strip()
                return None
            finally:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):  # ValueError: an overlong line
        return None


def _trim(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    text = "\n".join(lines[-_LOG_LINES:])
    if len(text) > _DETAIL_CHARS:
        text = "..." + text[-_DETAIL_CHARS:]
    return text or "(no output)"


def _host_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError) as error:
        raise BackendError(
            f"cannot read this host's memory ({error}); set the tart backend's memory"
        ) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); Linux shows it in /proc (macOS has no /proc, and there an
    # orphaned run process is reaped by launchd).
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def _tart_state(entry: Mapping[str, Any]) -> str:
    state = entry.get("State")
    if isinstance(state, str) and state:
        return state.lower()
    return "running" if entry.get("Running") else "stopped"


class TartBackend:
    name = "tart"
    resolves_images = False
    warm_start_guest_os = ("macos",)  # tart suspend saves macOS guests only

    def __init__(self, settings: TartSettings) -> None:
        self.settings = settings
        self._callbacks: list[Callable[[str], None]] = []
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # our own `tart run` children
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._restored: set[str] = set()  # VMs resumed from a warm-pool entry
        self._cold: dict[str, str] = {}  # VM -> why it booted instead of resuming its entry
        env = dict(os.environ)
        env.update(settings.env)
        if settings.tart_home is not None:
            env["TART_HOME"] = str(settings.tart_home)
        self._env = env

    # -- the Backend protocol --------------------------------------------------------------

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    async def capacity(self) -> Capacity:
        s = self.settings
        cpu = s.cpu if s.cpu is not None else os.cpu_count() or 1
        memory = s.memory if s.memory is not None else _host_memory()
        disk = s.disk if s.disk is not None else self._disk_size()
        return Capacity(
            cpu=max(1, cpu - s.cpu_reserve),
            memory=max(0, memory - s.memory_reserve),
            disk=disk,
            vms=s.max_vms,
            arch="arm64",
            os="darwin",
            guest_os=s.guest_os,
            accelerator="hvf",
            accelerator_reason="tart runs guests with Apple's Virtualization framework",
        )

    async def create(self, vm_id: str, spec: dict[str, Any]) -> None:
        name = self._name(vm_id)
        image = str(spec.get("image") or "")
        if not image:
            raise BackendError("the VM has no image to clone")
        if image.startswith("-"):
            raise BackendError(f"image {image!r} is not a VM name or an OCI reference")
        cpu, memory_mb, disk_gb = self._sizes(spec)
        entries = await self._entries()
        entry = entries.get(vm_id)
        if entry is None and spec.get("savedState"):
            if len(entries) >= self.settings.max_vms:
                raise BackendError(f"this node already holds {self.settings.max_vms} tart VMs")
            problem = await self._take_entry(vm_id, str(spec["savedState"]))
            self._write_json(vm_id, "spec.json", spec)
            if problem is None:
                self._write_text(vm_id, "expected", "suspended")
                return  # resumed at start; its size is the entry's, which matched
            self._write_text(vm_id, COLD_REASON, f"the saved state was not used: {problem}")
            log.warning("tart: VM %s boots cold: the saved state was not used: %s", vm_id, problem)
        if entry is None:
            if len(entries) >= self.settings.max_vms:
                raise BackendError(f"this node already holds {self.settings.max_vms} tart VMs")
            self._write_json(vm_id, "spec.json", spec)
            self._write_text(vm_id, "expected", "stopped")
            try:
                await self._tart("clone", image, name, timeout=self.settings.clone_timeout)
            except BackendError:
                shutil.rmtree(self._dir(vm_id), ignore_errors=True)
                raise
            entry = (await self._entries()).get(vm_id) or {}
        elif _tart_state(entry) != "stopped":
            return  # already created and in use: nothing to change
        else:
            self._write_json(vm_id, "spec.json", spec)
        args = ["set", name, "--cpu", str(cpu), "--memory", str(memory_mb)]
        current_disk = entry.get("Disk")
        if disk_gb is not None and not (isinstance(current_disk, int) and current_disk >= disk_gb):
            args += ["--disk-size", str(disk_gb)]
        await self._tart(*args)

    async def start(self, vm_id: str) -> None:
        state = await self.status(vm_id)
        if state.actual == Actual.ABSENT:
            raise BackendError(f"no tart VM {vm_name(vm_id)} on this node")
        if state.actual in (Actual.RUNNING, Actual.STARTING):
            return
        if state.actual == Actual.FAILED:
            await self.stop(vm_id)  # clear what is left of the failed run first
        if state.actual == Actual.SUSPENDED:
            self._restored.add(vm_id)  # made from an entry: tart run resumes it
        cold = self._read_text(vm_id, COLD_REASON)
        if cold:
            self._cold[vm_id] = cold
            self._remove(vm_id, COLD_REASON)
        self._launch(vm_id)

    # -- warm-pool entries: `tart suspend`, put aside by `tart rename` -----------------------

    def _saved_dir(self, entry_id: str) -> Path:
        if not _ID.match(entry_id):
            raise BackendError(f"{entry_id!r} is not an entry id the tart backend accepts")
        return self.settings.state_dir / ".saved" / entry_id

    async def save_state(self, vm_id: str, entry_id: str, *, clone: bool = False) -> None:
        """Suspend the VM (macOS guests on macOS 14+ hosts only) and put it aside as an entry.
        tart has no way to start many VMs from one saved state: no clone goldens."""
        name = self._name(vm_id)
        saved = self._saved_dir(entry_id)
        try:
            if clone:
                raise BackendError(
                    "tart cannot start several VMs from one saved state: use a suspended pool"
                )
            state = await self.status(vm_id)
            if state.actual != Actual.RUNNING or not state.ready:
                raise BackendError(f"VM {vm_id} is not running and ready: nothing to save")
            await self.suspend(vm_id)
            saved.mkdir(parents=True, exist_ok=True)
            await self._tart("rename", name, SAVED_PREFIX + entry_id)
        except BackendError:
            shutil.rmtree(saved, ignore_errors=True)
            await self.delete(vm_id)
            raise
        await self._end_run(vm_id, grace=0.0)
        shutil.rmtree(self._dir(vm_id), ignore_errors=True)

    def saved_entries(self) -> set[str]:
        try:
            return {p.name for p in (self.settings.state_dir / ".saved").iterdir() if p.is_dir()}
        except OSError:
            return set()

    def saved_entries_in_use(self) -> set[str]:
        return set()

    async def discard_saved(self, entry_id: str) -> None:
        saved = self._saved_dir(entry_id)
        with contextlib.suppress(BackendError):  # not there (any more): fine
            await self._tart("delete", SAVED_PREFIX + entry_id)
        shutil.rmtree(saved, ignore_errors=True)

    async def _take_entry(self, vm_id: str, entry_id: str) -> str | None:
        """Rename the entry's suspended VM to this VM's; None when done, else why not."""
        saved = self._saved_dir(entry_id)
        if not saved.is_dir():
            return f"no entry {entry_id} on this node"
        try:
            await self._tart("rename", SAVED_PREFIX + entry_id, self._name(vm_id))
        except BackendError as error:
            await self.discard_saved(entry_id)
            return str(error)
        shutil.rmtree(saved, ignore_errors=True)
        return None

    async def stop(self, vm_id: str, timeout: float = 30.0) -> None:
        name = self._name(vm_id)
        entry = await self._entry(vm_id)
        if entry is None:
            raise BackendError(f"no tart VM {name} on this node")
        self._write_text(vm_id, "expected", "stopped")
        self._restored.discard(vm_id)  # started again, it boots
        proc = self._procs.get(vm_id)
        own_alive = proc is not None and proc.poll() is None
        if _tart_state(entry) in ("running", "suspended") or own_alive:
            seconds = max(1, math.ceil(timeout))
            try:
                await self._tart("stop", name, "--timeout", str(seconds), timeout=seconds + 30)
            except BackendError:
                # It may have stopped by itself meanwhile; then there is nothing to report.
                entry = await self._entry(vm_id)
                if entry is not None and _tart_state(entry) != "stopped":
                    raise
        await self._end_run(vm_id, grace=10.0)
        self._remove(vm_id, "boot.json")

    async def suspend(self, vm_id: str) -> None:
        name = self._name(vm_id)
        state = await self.status(vm_id)
        if state.actual == Actual.SUSPENDED:
            return
        if state.actual not in (Actual.RUNNING, Actual.STARTING):
            raise BackendError(f"cannot suspend a VM that is {state.actual}")
        guest_os = self._spec(vm_id).get("os") or "linux"
        if guest_os != "macos":
            raise BackendError(f"tart can suspend only macOS guests; this VM's os is {guest_os}")
        self._write_text(vm_id, "expected", "suspended")
        try:
            await self._tart("suspend", name)
        except BackendError:
            self._write_text(vm_id, "expected", "running")
            raise
        deadline = time.monotonic() + self.settings.suspend_timeout
        while True:
            entry = await self._entry(vm_id)
            tart_state = _tart_state(entry) if entry is not None else "absent"
            if not self._run_alive(vm_id) and tart_state != "running":
                if tart_state == "suspended":
                    break
                raise BackendError(
                    f"tart suspend {name} did not save the VM; tart run said:\n"
                    + self._log_tail(vm_id)
                )
            if time.monotonic() > deadline:
                raise BackendError(
                    f"tart suspend {name}: the VM was not saved within "
                    f"{self.settings.suspend_timeout:g}s"
                )
            await asyncio.sleep(min(self.settings.poll_interval, 0.5))
        self._cancel_watch(vm_id)
        self._procs.pop(vm_id, None)
        self._remove(vm_id, "boot.json")

    async def resume(self, vm_id: str) -> None:
        state = await self.status(vm_id)
        if state.actual in (Actual.RUNNING, Actual.STARTING):
            return
        if state.actual != Actual.SUSPENDED:
            raise BackendError(f"cannot resume a VM that is {state.actual}")
        self._launch(vm_id)  # tart run restores the saved state

    async def delete(self, vm_id: str) -> None:
        name = self._name(vm_id)
        entry = await self._entry(vm_id)
        if entry is not None:
            if _tart_state(entry) == "running" or self._run_alive(vm_id):
                await self.stop(vm_id)
            try:
                await self._tart("delete", name)
            except BackendError:
                if await self._entry(vm_id) is not None:
                    raise
        await self._end_run(vm_id, grace=0.0)
        shutil.rmtree(self._dir(vm_id), ignore_errors=True)
        self._restored.discard(vm_id)
        self._cold.pop(vm_id, None)

    async def status(self, vm_id: str) -> VMState:
        self._name(vm_id)
        return self._state(vm_id, await self._entry(vm_id))

    async def open_port(
        self, vm_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        state = await self.status(vm_id)
        if state.actual not in (Actual.RUNNING, Actual.SUSPENDED) or not state.addresses:
            raise BackendError(f"the VM is {state.actual} and has no address yet")
        return await connect_tcp(state.addresses[0], port, f"port {port} of the VM")

    async def list(self) -> list[VMState]:
        return [self._state(vm_id, entry) for vm_id, entry in (await self._entries()).items()]

    async def close(self) -> None:
        """Stop watching (the VMs keep running; a new backend on the same state dir adopts them)."""
        for vm_id in list(self._watches):
            self._cancel_watch(vm_id)

    # -- state -----------------------------------------------------------------------------

    def _state(self, vm_id: str, entry: Mapping[str, Any] | None) -> VMState:
        if entry is None:
            return VMState(vm_id, Actual.ABSENT)
        tart_state = _tart_state(entry)
        expected = self._read_text(vm_id, "expected") or "stopped"
        if tart_state == "running" or (expected == "running" and self._launching(vm_id)):
            self._ensure_watch(vm_id)
            boot = self._read_json(vm_id, "boot.json")
            if boot.get("error"):
                return VMState(vm_id, Actual.FAILED, str(boot["error"]), "BootTimeout")
            ip = boot.get("ip")
            restored = vm_id in self._restored
            cold = self._cold.get(vm_id)
            if not isinstance(ip, str) or not ip:
                waiting = "waiting for the guest's IP address"
                return VMState(vm_id, Actual.STARTING, cold or waiting, restored=restored)
            ready = bool(boot.get("ready"))
            if ready:
                self._cold.pop(vm_id, None)
            return VMState(
                vm_id,
                Actual.RUNNING,
                "" if ready else cold or f"waiting for SSH on {ip}:{self.settings.ssh_port}",
                ports={port: (ip, port) for port in self._ports(vm_id)},
                addresses=[ip],
                boot_time=boot.get("bootTime"),
                ready=ready,
                restored=restored,
            )
        if tart_state == "suspended":
            return VMState(vm_id, Actual.SUSPENDED)
        if expected in ("running", "suspended"):
            message = self._exit_message(vm_id, expected)
            return VMState(vm_id, Actual.FAILED, message, "ProcessExited")
        return VMState(vm_id, Actual.STOPPED)

    def _exit_message(self, vm_id: str, expected: str) -> str:
        code = self._read_json(vm_id, "exit.json").get("code")
        how = f" (exit {code})" if isinstance(code, int) else ""
        why = (
            "while suspending, without saving the VM's state"
            if expected == "suspended"
            else "without being asked to stop"
        )
        return (
            f"tart run {vm_name(vm_id)} exited{how} {why}; "
            f"the last lines of its log:\n{self._log_tail(vm_id)}"
        )

    def _log_tail(self, vm_id: str) -> str:
        try:
            data = (self._dir(vm_id) / "run.log").read_bytes()[-64 * 1024 :]
        except OSError:
            return "(no log)"
        return _trim(data)

    def _ports(self, vm_id: str) -> tuple[int, ...]:
        ports: set[int] = set()
        for port in self._spec(vm_id).get("ports") or [{"guest": 22}]:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                ports.add(int(port["guest"]))
        return tuple(sorted(ports))

    def _spec(self, vm_id: str) -> dict[str, Any]:
        return self._read_json(vm_id, "spec.json")

    @staticmethod
    def _sizes(spec: Mapping[str, Any]) -> tuple[int, int, int | None]:
        try:
            cpu = int(spec.get("cpu") or 2)
            memory = parse_bytes(spec.get("memory") or "2Gi")
            disk = parse_bytes(spec["disk"]) if spec.get("disk") else None
        except (TypeError, ValueError) as error:
            raise BackendError(f"invalid VM size: {error}") from None
        if cpu < 1:
            raise BackendError("invalid VM size: cpu must be at least 1")
        memory_mb = -(-memory // _MB)
        disk_gb = -(-disk // _GB) if disk is not None else None
        return cpu, memory_mb, disk_gb

    # -- the run process and its watcher ---------------------------------------------------

    def _launch(self, vm_id: str) -> None:
        name = self._name(vm_id)
        directory = self._dir(vm_id)
        directory.mkdir(parents=True, exist_ok=True)
        argv = [self.settings.tart, "run", name, "--no-graphics"]
        if self.settings.suspendable and self._spec(vm_id).get("os") == "macos":
            argv.append("--suspendable")
        self._cancel_watch(vm_id)
        for stale in ("boot.json", "exit.json"):
            self._remove(vm_id, stale)
        self._write_text(vm_id, "expected", "running")
        with open(directory / "run.log", "wb") as output:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as error:
                self._write_text(vm_id, "expected", "stopped")
                raise self._not_runnable(error) from None
        self._procs[vm_id] = proc
        self._write_json(vm_id, "run.json", {"pid": proc.pid, "launched": time.time()})
        log.info("tart: started %s (pid %d)", name, proc.pid)
        self._ensure_watch(vm_id)

    def _run_pid(self, vm_id: str) -> tuple[int | None, float]:
        run = self._read_json(vm_id, "run.json")
        pid, launched = run.get("pid"), run.get("launched")
        return (
            pid if isinstance(pid, int) and pid > 0 else None,
            float(launched) if isinstance(launched, int | float) else 0.0,
        )

    def _run_alive(self, vm_id: str) -> bool:
        proc = self._procs.get(vm_id)
        if proc is not None:
            return proc.poll() is None
        pid, _ = self._run_pid(vm_id)
        return pid is not None and _pid_alive(pid)

    def _launching(self, vm_id: str) -> bool:
        """A run process we started is alive though tart does not show it running (yet)."""
        proc = self._procs.get(vm_id)
        if proc is not None:
            return proc.poll() is None
        # A recorded pid is trusted only briefly: after that it may name another process.
        pid, launched = self._run_pid(vm_id)
        fresh = time.time() - launched < self.settings.launch_grace
        return pid is not None and fresh and _pid_alive(pid)

    async def _end_run(self, vm_id: str, grace: float) -> None:
        """Stop watching; make sure our own run process is gone (SIGINT, then SIGKILL)."""
        self._cancel_watch(vm_id)
        proc = self._procs.pop(vm_id, None)
        if proc is None:
            return
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for sig in (signal.SIGINT, signal.SIGKILL):
            if proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            for _ in range(100):
                if proc.poll() is not None:
                    return
                await asyncio.sleep(0.05)

    def _ensure_watch(self, vm_id: str) -> None:
        """Watch a VM whose run process is alive (ours, or adopted from its recorded pid)."""
        task = self._watches.get(vm_id)
        if (task is not None and not task.done()) or not self._run_alive(vm_id):
            return
        self._watches[vm_id] = asyncio.get_running_loop().create_task(
            self._watch(vm_id), name=f"tart-watch-{vm_id}"
        )

    def _cancel_watch(self, vm_id: str) -> None:
        task = self._watches.pop(vm_id, None)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _watch(self, vm_id: str) -> None:
        """Follow a running VM: its address, its SSH banner, and the end of its run process."""
        try:
            await self._follow(vm_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tart: watching %s failed", vm_name(vm_id))

    async def _follow(self, vm_id: str) -> None:
        name = vm_name(vm_id)
        s = self.settings
        _, launched = self._run_pid(vm_id)
        while True:
            if not self._run_alive(vm_id):
                self._ended(vm_id)
                return
            boot = self._read_json(vm_id, "boot.json")
            if boot.get("error"):
                await asyncio.sleep(s.poll_interval)
            elif not boot.get("ip"):
                ip = await self._ip(name)
                if ip is not None:
                    self._write_json(vm_id, "boot.json", {"ip": ip, "bootTime": now_iso()})
                    log.info("tart: %s has address %s", name, ip)
                    self._notify(vm_id)
                elif time.time() - launched > s.boot_timeout and self._run_alive(vm_id):
                    error = f"{name} got no IP address within {s.boot_timeout:g}s of tart run"
                    self._write_json(vm_id, "boot.json", {"error": error})
                    self._notify(vm_id)
                else:
                    await asyncio.sleep(min(s.poll_interval, 1.0))
            elif not boot.get("ready"):
                banner = await ssh_banner(str(boot["ip"]), s.ssh_port, s.probe_timeout)
                if banner is not None:
                    self._write_json(vm_id, "boot.json", {**boot, "ready": True})
                    log.info("tart: %s answers SSH (%s)", name, banner)
                    self._notify(vm_id)
                else:
                    await asyncio.sleep(s.probe_interval)
            else:
                await asyncio.sleep(s.poll_interval)

    async def _ip(self, name: str) -> str | None:
        wait = self.settings.ip_wait
        try:
            out = await self._tart("ip", name, "--wait", str(wait), timeout=wait + 30)
        except BackendError as error:
            log.debug("tart: no address for %s yet: %s", name, error)
            return None
        for line in reversed(out.splitlines()):
            with contextlib.suppress(ValueError):
                return str(ipaddress.ip_address(line.strip()))
        return None

    def _ended(self, vm_id: str) -> None:
        proc = self._procs.pop(vm_id, None)
        code = proc.returncode if proc is not None else None
        self._watches.pop(vm_id, None)
        if self._read_text(vm_id, "expected") != "running":
            return  # asked to stop or suspend
        self._write_json(vm_id, "exit.json", {"code": code})
        log.warning("tart: %s exited on its own (exit %s)", vm_name(vm_id), code)
        self._notify(vm_id)

    def _notify(self, vm_id: str) -> None:
        for callback in self._callbacks:
            try:
                callback(vm_id)
            except Exception:
                log.exception("tart: a state-change callback failed")

    # -- tart commands ---------------------------------------------------------------------

    async def _tart(self, *args: str, timeout: float | None = None) -> str:
        """Run `tart ARGS`; its stdout, or BackendError naming the command with tart's message."""
        command = "tart " + shlex.join(args)
        limit = timeout if timeout is not None else self.settings.command_timeout
        try:
            proc = await asyncio.create_subprocess_exec(
                self.settings.tart,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
            )
        except OSError as error:
            raise self._not_runnable(error) from None
        try:
            async with asyncio.timeout(limit):
                out, err = await proc.communicate()
        except TimeoutError:
            raise BackendError(f"{command} timed out after {limit:g}s") from None
        finally:
            if proc.returncode is None:
                processes.kill(proc)
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            # tart prints some errors on stdout (`tart ip`: "no IP address found ...").
            detail = _trim(err if err.strip() else out)
            raise BackendError(f"{command} failed (exit {proc.returncode}): {detail}")
        return out.decode("utf-8", "replace")

    def _not_runnable(self, error: OSError) -> BackendError:
        path = self.settings.tart
        if isinstance(error, FileNotFoundError):
            where = "on PATH" if os.sep not in path else "there"
            return BackendError(
                f"tart is not installed at {path!r} (not found {where}); install it from "
                "https://tart.run or set the tart backend's tart path"
            )
        if isinstance(error, PermissionError):
            return BackendError(f"tart at {path!r} is not executable")
        return BackendError(f"cannot run tart at {path!r}: {error}")

    async def _entries(self) -> dict[str, dict[str, Any]]:
        """This backend's VMs in `tart list --format json`, by VM id."""
        out = await self._tart("list", "--format", "json")
        try:
            items = json.loads(out or "[]")
        except ValueError:
            raise BackendError(f"tart list --format json printed no JSON: {_trim(out)}") from None
        if not isinstance(items, list):
            raise BackendError("tart list --format json did not print a list")
        entries: dict[str, dict[str, Any]] = {}
        for item in items:
            if not isinstance(item, dict):
                continue
            name = item.get("Name")
            if not isinstance(name, str) or not name.startswith(PREFIX):
                continue
            if item.get("Source", "local") != "local":
                continue  # OCI cache entries are images, not VMs
            vm_id = name[len(PREFIX) :]
            if _ID.match(vm_id):
                entries[vm_id] = item
        return entries

    async def _entry(self, vm_id: str) -> dict[str, Any] | None:
        self._name(vm_id)
        return (await self._entries()).get(vm_id)

    # -- the state dir ---------------------------------------------------------------------

    def _name(self, vm_id: str) -> str:
        if not _ID.match(vm_id):
            raise BackendError(f"{vm_id!r} is not a VM id the tart backend accepts")
        return vm_name(vm_id)

    def _dir(self, vm_id: str) -> Path:
        self._name(vm_id)
        return self.settings.state_dir / vm_id

    def _disk_size(self) -> int:
        home = self.settings.tart_home or Path(self._env.get("TART_HOME") or "~/.tart")
        for path in (home.expanduser(), self.settings.state_dir, *self.settings.state_dir.parents):
            with contextlib.suppress(OSError):
                return shutil.disk_usage(path).total
        raise BackendError("cannot measure the disk for tart's VMs; set the tart backend's disk")

    def _read_text(self, vm_id: str, file: str) -> str:
        try:
            return (self._dir(vm_id) / file).read_text().strip()
        except OSError:
            return ""

    def _write_text(self, vm_id: str, file: str, text: str) -> None:
        directory = self._dir(vm_id)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{file}.tmp"
        tmp.write_text(text + "\n")
        os.replace(tmp, directory / file)

    def _read_json(self, vm_id: str, file: str) -> dict[str, Any]:
        try:
            data = json.loads((self._dir(vm_id) / file).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_json(self, vm_id: str, file: str, data: Mapping[str, Any]) -> None:
        self._write_text(vm_id, file, json.dumps(data, sort_keys=True))

    def _remove(self, vm_id: str, file: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._dir(vm_id) / file).unlink()
