"""The tart backend against tests/fakes/tart, a fake tart CLI (the real tart runs only on macOS).

Every test name contains `fake`, so `-k fake` selects them and a run against a real tart can
leave them out. The fixture kills every fake `tart run` left behind, even when a test fails.
"""

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shoal.backends.base import Actual, BackendError, VMState
from shoal.backends.tart import TartBackend, TartSettings, ssh_banner

pytestmark = pytest.mark.timeout(120)

FAKE_TART = Path(__file__).resolve().parents[1] / "fakes" / "tart"
GI = 2**30
IMAGE = "ghcr.io/cirruslabs/macos-sonoma-base:latest"
MACOS: dict[str, Any] = {
    "image": IMAGE,
    "cpu": 4,
    "memory": "8Gi",
    "disk": "80Gi",
    "os": "macos",
    "ports": [{"guest": 22}, {"guest": 5900}],
}
LINUX: dict[str, Any] = {
    "image": "ghcr.io/cirruslabs/ubuntu:latest",
    "cpu": 2,
    "memory": "2Gi",
    "disk": "20Gi",
    "os": "linux",
}


@dataclass
class Fake:
    root: Path
    state_file: Path
    log_file: Path
    state_dir: Path
    events: list[str] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "FAKE_TART_STATE": str(self.state_file),
            "FAKE_TART_LOG": str(self.log_file),
            **extra,
        }

    def settings(self, env: dict[str, str] | None = None, **overrides: Any) -> TartSettings:
        values: dict[str, Any] = {
            "state_dir": self.state_dir,
            "tart": str(FAKE_TART),
            "env": self.env(**(env or {})),
            "cpu": 8,
            "memory": 16 * GI,
            "disk": 500 * GI,
            "poll_interval": 0.05,
            "probe_interval": 0.05,
            "probe_timeout": 1.0,
            "ip_wait": 1,
            "command_timeout": 15.0,
            "launch_grace": 10.0,
        }
        values.update(overrides)
        return TartSettings(**values)

    def backend(self, env: dict[str, str] | None = None, **overrides: Any) -> TartBackend:
        backend = TartBackend(self.settings(env, **overrides))
        backend.subscribe(self.events.append)
        return backend

    def calls(self, *, skip_list: bool = True) -> list[list[str]]:
        if not self.log_file.exists():
            return []
        calls = [json.loads(line) for line in self.log_file.read_text().splitlines()]
        return [c for c in calls if not (skip_list and c[:1] == ["list"])]

    def commands(self) -> list[str]:
        """The tart subcommands run so far, `list` and `ip` left out (they poll)."""
        return [c[0] for c in self.calls() if c[0] != "ip"]

    def tart(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FAKE_TART), *args],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=30,
        )

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """The fake's state, changed under its lock (as the fake itself does)."""
        with open(self.state_file.with_name(self.state_file.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(self.state_file.read_text())
            yield state
            self.state_file.write_text(json.dumps(state))

    def vms(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {}
        vms: dict[str, Any] = json.loads(self.state_file.read_text())["vms"]
        return vms

    def crash(self, name: str, message: str) -> None:
        with self.edit() as state:
            state["vms"][name]["crash"] = message

    def run_pids(self) -> set[int]:
        pids = {vm["pid"] for vm in self.vms().values() if vm.get("pid")}
        for run in self.state_dir.glob("*/run.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.add(int(json.loads(run.read_text())["pid"]))
        return pids


def _is_fake_run(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            return os.getpgid(pid) == pid  # no /proc: a session leader, as tart run is
        except OSError:
            return False
    return str(FAKE_TART).encode() in cmdline and b"run" in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == "Z":
            return False
    return True


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Fake]:
    fake = Fake(
        root=tmp_path,
        state_file=tmp_path / "tart-state.json",
        log_file=tmp_path / "tart-calls.log",
        state_dir=tmp_path / "vms",
    )
    try:
        yield fake
    finally:
        for pid in fake.run_pids():
            if _alive(pid) and _is_fake_run(pid):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        for pid in fake.run_pids():
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


@dataclass
class BannerServer:
    port: int = 0
    banner: bytes = b"SSH-2.0-fake\r\n"
    connections: int = 0


@contextlib.asynccontextmanager
async def banner_server(banner: bytes = b"SSH-2.0-fake\r\n") -> AsyncIterator[BannerServer]:
    """A TCP server on 127.0.0.1 that greets every connection with `banner`."""
    info = BannerServer(banner=banner)

    async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.connections += 1
        with contextlib.suppress(OSError):
            if info.banner:
                writer.write(info.banner)
                await writer.drain()
                await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(5)  # silent
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def wait_state(
    backend: TartBackend,
    vm_id: str,
    predicate: Callable[[VMState], bool],
    timeout: float = 20.0,
) -> VMState:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await backend.status(vm_id)
        if predicate(state):
            return state
        if loop.time() > deadline:
            raise AssertionError(f"{vm_id} never got there; last state {state}")
        await asyncio.sleep(0.05)


async def told(fake: Fake, count: int, timeout: float = 5.0) -> None:
    """Wait until the backend has called its subscribers more than `count` times."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(fake.events) <= count:
        if loop.time() > deadline:
            raise AssertionError(f"the backend told nobody: {fake.events}")
        await asyncio.sleep(0.05)


def running_ready(state: VMState) -> bool:
    return state.actual == Actual.RUNNING and state.ready


async def booted(fake: Fake, backend: TartBackend, vm_id: str, spec: dict[str, Any]) -> VMState:
    await backend.create(vm_id, spec)
    await backend.start(vm_id)
    return await wait_state(backend, vm_id, running_ready)


# -- create ----------------------------------------------------------------------------------


def test_fake_tart_create_runs_clone_then_set(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend()
        await backend.create("vm1", MACOS)
        state = await backend.status("vm1")
        assert state.actual == Actual.STOPPED

    asyncio.run(scenario())
    # 8Gi is 8192 MiB (tart's "megabytes"); 80Gi is 85.9 GB, rounded up to 86.
    assert fake.calls() == [
        ["clone", IMAGE, "shoal-vm1"],
        ["set", "shoal-vm1", "--cpu", "4", "--memory", "8192", "--disk-size", "86"],
    ]
    vm = fake.vms()["shoal-vm1"]
    assert (vm["cpu"], vm["memory"], vm["disk"], vm["source"]) == (4, 8192, 86, IMAGE)


def test_fake_tart_create_is_idempotent_and_never_shrinks_the_disk(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend()
        spec = {**MACOS, "disk": "20Gi", "memory": "3Gi"}
        await backend.create("vm1", spec)
        await backend.create("vm1", spec)  # already there: no second clone

    asyncio.run(scenario())
    # The image's disk (50 GB in the fake) is larger than 20Gi: no --disk-size, which would fail.
    set_call = ["set", "shoal-vm1", "--cpu", "4", "--memory", "3072"]
    assert fake.calls() == [["clone", IMAGE, "shoal-vm1"], set_call, set_call]
    assert fake.vms()["shoal-vm1"]["disk"] == 50


def test_fake_tart_create_refuses_beyond_max_vms(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend()
        await backend.create("vm1", MACOS)
        await backend.create("vm2", MACOS)
        with pytest.raises(BackendError, match="already holds 2 tart VMs"):
            await backend.create("vm3", MACOS)

    asyncio.run(scenario())
    assert set(fake.vms()) == {"shoal-vm1", "shoal-vm2"}


# -- start, readiness ------------------------------------------------------------------------


def test_fake_tart_start_is_running_with_address_and_ready_on_ssh_banner(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await backend.create("vm1", MACOS)
            await backend.start("vm1")
            state = await wait_state(backend, "vm1", running_ready)
            assert state.addresses == ["127.0.0.1"]
            # The guest is reached at its own address: each guest port maps to itself.
            assert state.ports == {22: ("127.0.0.1", 22), 5900: ("127.0.0.1", 5900)}
            assert state.boot_time
            assert server.connections >= 1
            await backend.start("vm1")  # already running: nothing happens
            assert (await backend.status("vm1")).actual == Actual.RUNNING
            await backend.close()

    asyncio.run(scenario())
    runs = [c for c in fake.calls() if c[0] == "run"]
    assert runs == [["run", "shoal-vm1", "--no-graphics", "--suspendable"]]
    assert ["ip", "shoal-vm1", "--wait", "1"] in fake.calls()
    assert "vm1" in fake.events  # boot finished on its own: the agent was told
    log = (fake.state_dir / "vm1" / "run.log").read_text()
    assert "fake tart: shoal-vm1 is up (4 CPUs, 8192 MB)" in log
    assert json.loads((fake.state_dir / "vm1" / "run.json").read_text())["pid"] > 0


def test_fake_tart_running_is_not_ready_until_the_guest_sends_an_ssh_banner(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server(b"220 not ssh\r\n") as server:
            backend = fake.backend(ssh_port=server.port)
            await backend.create("vm1", LINUX)
            await backend.start("vm1")
            state = await wait_state(backend, "vm1", lambda s: s.actual == Actual.RUNNING)
            await asyncio.sleep(0.3)  # several probes
            state = await backend.status("vm1")
            assert state.actual == Actual.RUNNING and not state.ready
            assert "waiting for SSH" in state.message
            server.banner = b"SSH-2.0-OpenSSH_9.6\r\n"
            state = await wait_state(backend, "vm1", running_ready)
            assert state.message == ""

    asyncio.run(scenario())
    # A Linux guest is not run --suspendable (tart can save only macOS guests).
    assert ["run", "shoal-vm1", "--no-graphics"] in fake.calls()


def test_fake_tart_vm_is_starting_until_it_has_an_address(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend(env={"FAKE_TART_FAIL": "ip:no IP address found"}, ip_wait=0)
        await backend.create("vm1", MACOS)
        await backend.start("vm1")
        await asyncio.sleep(0.5)
        state = await backend.status("vm1")
        assert state.actual == Actual.STARTING
        assert state.addresses == [] and not state.ready

    asyncio.run(scenario())


def test_fake_tart_no_address_within_boot_timeout_is_failed(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend(
            env={"FAKE_TART_FAIL": "ip:no IP address found"}, ip_wait=0, boot_timeout=0.5
        )
        await backend.create("vm1", MACOS)
        await backend.start("vm1")
        state = await wait_state(backend, "vm1", lambda s: s.actual == Actual.FAILED)
        assert state.reason == "BootTimeout"
        assert "got no IP address within 0.5s" in state.message
        assert "vm1" in fake.events
        await backend.stop("vm1")  # stopping clears the failure
        assert (await backend.status("vm1")).actual == Actual.STOPPED

    asyncio.run(scenario())


# -- stop, suspend, resume, delete ----------------------------------------------------------


def test_fake_tart_stop_stops_the_run_process(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "vm1", MACOS)
            pid = json.loads((fake.state_dir / "vm1" / "run.json").read_text())["pid"]
            count = len(fake.events)
            await backend.stop("vm1", timeout=20)
            state = await backend.status("vm1")
            assert state.actual == Actual.STOPPED
            assert state.addresses == [] and not state.ready
            assert not _alive(pid)
            await asyncio.sleep(0.2)
            assert len(fake.events) == count  # a stop asked for is no change "on its own"
            await backend.stop("vm1")  # stopped already: fine
            assert (await backend.status("vm1")).actual == Actual.STOPPED

    asyncio.run(scenario())
    assert ["stop", "shoal-vm1", "--timeout", "20"] in fake.calls()
    assert fake.vms()["shoal-vm1"]["state"] == "stopped"


def test_fake_tart_suspend_and_resume(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "vm1", MACOS)
            await backend.suspend("vm1")
            state = await backend.status("vm1")
            assert state.actual == Actual.SUSPENDED and not state.ready
            await backend.suspend("vm1")  # suspended already: fine
            await backend.resume("vm1")
            state = await wait_state(backend, "vm1", running_ready)
            assert state.addresses == ["127.0.0.1"]

    asyncio.run(scenario())
    assert fake.commands() == ["clone", "set", "run", "suspend", "run"]
    assert "restoring VM state from a snapshot" in (fake.state_dir / "vm1" / "run.log").read_text()
    assert "vm1" in fake.events


def test_fake_tart_warm_pool_entry_is_suspended_put_aside_and_resumed_by_its_claim(
    fake: Fake,
) -> None:
    """save_state suspends the VM and renames it out of the node's VMs; a VM made from the
    entry takes it by renaming it back and resumes it at start. An entry is used once; a
    missing one boots cold and says why; clone goldens are refused."""

    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "entry1", MACOS)
            await backend.save_state("entry1", "entry1")
            assert backend.saved_entries() == {"entry1"}
            assert (await backend.status("entry1")).actual == Actual.ABSENT
            assert set(fake.vms()) == {"shoalsaved-entry1"}
            assert [s.id for s in await backend.list()] == []  # not a VM of the node

            await backend.create("vm2", {**MACOS, "savedState": "entry1"})
            assert backend.saved_entries() == set()
            await backend.start("vm2")
            state = await wait_state(backend, "vm2", running_ready)
            assert state.restored and state.message == ""
            log = (fake.state_dir / "vm2" / "run.log").read_text()
            assert "restoring VM state from a snapshot" in log

            async with banner_server(b"") as silent:  # a guest that never answers: not ready
                slow = fake.backend(ssh_port=silent.port)
                await slow.create("vm3", {**MACOS, "savedState": "entry1"})  # used already
                await slow.start("vm3")
                cold = await wait_state(slow, "vm3", lambda s: s.actual == Actual.RUNNING)
                assert not cold.restored
                assert cold.message == "the saved state was not used: no entry entry1 on this node"
                await slow.stop("vm3")

            await backend.start("vm3")
            await wait_state(backend, "vm3", running_ready)
            with pytest.raises(BackendError, match="cannot start several VMs from one saved"):
                await backend.save_state("vm3", "golden", clone=True)
            assert (await backend.status("vm3")).actual == Actual.ABSENT  # gone, as if deleted
            await booted(fake, backend, "linux1", LINUX)
            with pytest.raises(BackendError, match="can suspend only macOS guests"):
                await backend.save_state("linux1", "entry2")
            assert backend.saved_entries() == set()
            await backend.delete("vm2")
            await booted(fake, backend, "entry4", MACOS)
            await backend.save_state("entry4", "entry4")
            await backend.discard_saved("entry4")
            await backend.discard_saved("entry4")  # gone already: fine
            assert backend.saved_entries() == set() and "shoalsaved-entry4" not in fake.vms()

    asyncio.run(scenario())


def test_fake_tart_stop_discards_a_suspended_vm(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "vm1", MACOS)
            await backend.suspend("vm1")
            await backend.stop("vm1")
            assert (await backend.status("vm1")).actual == Actual.STOPPED

    asyncio.run(scenario())
    assert fake.commands()[-2:] == ["suspend", "stop"]


def test_fake_tart_suspend_refuses_a_linux_guest_and_keeps_it_running(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "vm1", LINUX)
            with pytest.raises(BackendError, match="only macOS guests; this VM's os is linux"):
                await backend.suspend("vm1")
            assert (await backend.status("vm1")).actual == Actual.RUNNING
            await backend.resume("vm1")  # running: nothing to do
            assert running_ready(await backend.status("vm1"))

    asyncio.run(scenario())
    assert "suspend" not in fake.commands()


def test_fake_tart_suspend_failure_names_the_command(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(
                env={"FAKE_TART_FAIL": "suspend:Error: SuspendFailed: macOS 14 or newer needed"},
                ssh_port=server.port,
            )
            await booted(fake, backend, "vm1", MACOS)
            with pytest.raises(BackendError) as caught:
                await backend.suspend("vm1")
            assert str(caught.value) == (
                "tart suspend shoal-vm1 failed (exit 1): "
                "Error: SuspendFailed: macOS 14 or newer needed"
            )
            # Still running, and not taken for a crash.
            assert running_ready(await backend.status("vm1"))

    asyncio.run(scenario())


def test_fake_tart_delete_stops_then_deletes_and_absent_is_fine(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "vm1", MACOS)
            await backend.delete("vm1")
            assert (await backend.status("vm1")).actual == Actual.ABSENT
            await backend.delete("vm1")  # gone already
            await backend.delete("never-created")
            assert await backend.list() == []

    asyncio.run(scenario())
    assert fake.commands() == ["clone", "set", "run", "stop", "delete"]
    assert fake.vms() == {}
    assert not (fake.state_dir / "vm1").exists()


# -- list, adoption, crashes -------------------------------------------------------------------


def test_fake_tart_list_ignores_vms_not_named_shoal(fake: Fake) -> None:
    assert fake.tart("clone", IMAGE, "my-own-vm").returncode == 0
    assert fake.tart("clone", "my-own-vm", "shoalish").returncode == 0

    async def scenario() -> None:
        backend = fake.backend()
        await backend.create("vm1", MACOS)
        states = await backend.list()
        assert [(s.id, s.actual) for s in states] == [("vm1", Actual.STOPPED)]
        assert (await backend.status("my-own-vm")).actual == Actual.ABSENT
        await backend.delete("vm1")

    asyncio.run(scenario())
    # The OCI cache entry (Source "oci") and the other VMs are untouched.
    assert set(fake.vms()) == {"my-own-vm", "shoalish"}


def test_fake_tart_second_backend_adopts_a_running_vm(fake: Fake) -> None:
    async def first() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "vm1", MACOS)
            await backend.close()  # as an agent that exits: the VM keeps running

    asyncio.run(first())
    pid = json.loads((fake.state_dir / "vm1" / "run.json").read_text())["pid"]
    assert _alive(pid)

    async def second() -> None:
        backend = fake.backend()  # a restarted agent, same state dir
        state = await backend.status("vm1")
        assert state.actual == Actual.RUNNING and state.ready
        assert state.addresses == ["127.0.0.1"]
        assert state.ports[22] == ("127.0.0.1", 22)
        assert [s.id for s in await backend.list()] == ["vm1"]
        # Its watcher follows the adopted run process: a crash is reported.
        count = len(fake.events)
        fake.crash("shoal-vm1", "Error: the guest kernel panicked")
        state = await wait_state(backend, "vm1", lambda s: s.actual == Actual.FAILED)
        assert "the guest kernel panicked" in state.message
        await told(fake, count)
        await backend.delete("vm1")

    asyncio.run(second())
    assert fake.vms() == {}


def test_fake_tart_run_process_that_dies_is_failed_with_its_log(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "vm1", MACOS)
            count = len(fake.events)
            fake.crash("shoal-vm1", "Error: Virtualization.framework: the VM stopped with an error")
            # The exit code is recorded a moment after the process is gone: wait for it too.
            state = await wait_state(
                backend, "vm1", lambda s: s.actual == Actual.FAILED and "(exit" in s.message
            )
            assert state.reason == "ProcessExited"
            assert "tart run shoal-vm1 exited (exit 1) without being asked to stop" in (
                state.message
            )
            assert "fake tart: shoal-vm1 is up" in state.message  # the log's last lines
            assert "the VM stopped with an error" in state.message
            assert not state.ready and state.addresses == []
            await told(fake, count)  # the agent was told
            # Stop clears the failure; start boots afresh.
            await backend.stop("vm1")
            assert (await backend.status("vm1")).actual == Actual.STOPPED
            await backend.start("vm1")
            await wait_state(backend, "vm1", running_ready)

    asyncio.run(scenario())


def test_fake_tart_run_process_killed_is_failed(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            backend = fake.backend(ssh_port=server.port)
            await booted(fake, backend, "vm1", LINUX)
            pid = json.loads((fake.state_dir / "vm1" / "run.json").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            state = await wait_state(backend, "vm1", lambda s: s.actual == Actual.FAILED)
            assert f"exited (exit {-signal.SIGKILL})" in state.message
            await backend.start("vm1")  # from Failed: what is left is cleared, then a new run
            await wait_state(backend, "vm1", running_ready)

    asyncio.run(scenario())
    assert [c[0] for c in fake.calls() if c[0] in ("run", "stop")] == ["run", "run"]


def test_fake_tart_suspend_that_does_not_save_is_failed(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            # Without --suspendable, tart run cannot save a macOS guest: it ends instead.
            backend = fake.backend(ssh_port=server.port, suspendable=False)
            await booted(fake, backend, "vm1", MACOS)
            with pytest.raises(BackendError, match=r"^tart suspend shoal-vm1 did not save the VM"):
                await backend.suspend("vm1")
            state = await backend.status("vm1")
            assert state.actual == Actual.FAILED
            assert "while suspending, without saving the VM's state" in state.message
            assert "SuspendFailed" in state.message

    asyncio.run(scenario())


def test_fake_tart_run_that_fails_at_once_is_failed(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend(env={"FAKE_TART_FAIL": "run:Error: VM is already running!"})
        await backend.create("vm1", MACOS)
        await backend.start("vm1")
        state = await wait_state(backend, "vm1", lambda s: s.actual == Actual.FAILED)
        assert "Error: VM is already running!" in state.message
        await told(fake, 0)
        assert set(fake.events) == {"vm1"}

    asyncio.run(scenario())


# -- errors ------------------------------------------------------------------------------------


def test_fake_tart_clone_failure_names_the_command_and_tarts_message(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend(env={"FAKE_TART_FAIL": "clone:Error: manifest unknown"})
        with pytest.raises(BackendError) as caught:
            await backend.create("abc", {**MACOS, "image": "ghcr.io/x/y:1"})
        assert str(caught.value) == (
            "tart clone ghcr.io/x/y:1 shoal-abc failed (exit 1): Error: manifest unknown"
        )
        assert (await backend.status("abc")).actual == Actual.ABSENT

    asyncio.run(scenario())
    assert not (fake.state_dir / "abc").exists()


def test_fake_tart_set_failure_names_the_command(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend(env={"FAKE_TART_FAIL": "set:Error: invalid CPU count\n"})
        with pytest.raises(BackendError) as caught:
            await backend.create("vm1", MACOS)
        assert str(caught.value) == (
            "tart set shoal-vm1 --cpu 4 --memory 8192 --disk-size 86 failed (exit 1): "
            "Error: invalid CPU count"
        )

    asyncio.run(scenario())


def test_fake_tart_stop_failure_names_the_command(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            await booted(fake, fake.backend(ssh_port=server.port), "vm1", MACOS)
            failing = fake.backend(
                env={"FAKE_TART_FAIL": "stop:Error: failed to terminate the VM"},
                ssh_port=server.port,
            )
            with pytest.raises(BackendError, match=r"^tart stop shoal-vm1 --timeout 30 failed"):
                await failing.stop("vm1")
            assert (await failing.status("vm1")).actual == Actual.RUNNING

    asyncio.run(scenario())


def test_fake_tart_missing_binary_says_tart_is_not_installed(fake: Fake) -> None:
    async def scenario() -> None:
        backend = TartBackend(fake.settings(tart=str(fake.root / "no" / "tart")))
        for call in (
            backend.create("vm1", MACOS),
            backend.status("vm1"),
            backend.list(),
            backend.delete("vm1"),
        ):
            with pytest.raises(BackendError, match=r"tart is not installed at '.*/no/tart'"):
                await call
        on_path = TartBackend(fake.settings(tart="shoal-no-such-tart"))
        with pytest.raises(BackendError, match=r"not installed at 'shoal-no-such-tart'.*PATH"):
            await on_path.list()

    asyncio.run(scenario())


def test_fake_tart_command_timeout_names_the_command(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend(env={"FAKE_TART_HANG": "list"}, command_timeout=0.5)
        with pytest.raises(BackendError, match=r"^tart list --format json timed out after 0.5s"):
            await backend.status("vm1")

    asyncio.run(scenario())


def test_fake_tart_rejects_bad_ids_and_images(fake: Fake) -> None:
    async def scenario() -> None:
        backend = fake.backend()
        with pytest.raises(BackendError, match="not a VM id"):
            await backend.status("../etc")
        with pytest.raises(BackendError, match="not a VM name or an OCI reference"):
            await backend.create("vm1", {**MACOS, "image": "--insecure"})
        with pytest.raises(BackendError, match="invalid VM size"):
            await backend.create("vm1", {**MACOS, "memory": "lots"})

    asyncio.run(scenario())
    assert fake.commands() == []


# -- capacity and the banner probe -------------------------------------------------------------


def test_fake_tart_capacity(fake: Fake) -> None:
    async def scenario() -> None:
        given = await fake.backend().capacity()
        assert (given.cpu, given.memory, given.disk, given.vms) == (7, 14 * GI, 500 * GI, 2)
        assert (given.arch, given.os, given.accelerator) == ("arm64", "darwin", "hvf")
        assert given.guest_os == ("macos", "linux")
        host = await fake.backend(cpu=None, memory=None, disk=None, cpu_reserve=0).capacity()
        assert host.cpu == os.cpu_count()
        assert host.memory == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") - 2 * GI
        assert host.disk > 0

    asyncio.run(scenario())


def test_fake_ssh_banner_probe(fake: Fake) -> None:
    async def scenario() -> None:
        async with banner_server() as server:
            assert await ssh_banner("127.0.0.1", server.port, 2) == "SSH-2.0-fake"
            server.banner = b"HTTP/1.0 400 Bad Request\r\n"
            assert await ssh_banner("127.0.0.1", server.port, 2) is None
            server.banner = b""  # says nothing
            assert await ssh_banner("127.0.0.1", server.port, 0.3) is None
        assert await ssh_banner("127.0.0.1", server.port, 1) is None  # nothing listens

    asyncio.run(scenario())


def test_fake_tart_is_executable() -> None:
    assert os.access(FAKE_TART, os.X_OK)
    assert shutil.which("python3"), "the fake tart runs under python3"
