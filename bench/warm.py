"""Instant start in the qemu backend (no controller yet): a VM started from a saved state against
the same VM booted, to the guest's SSH banner, on real QEMU with the test guest.

- cold: `create` + `start` of the test guest (1 cpu, 256 MiB) until the backend reports the guest
  ready (its SSH banner answered), RUNS times;
- suspended: each of those VMs, once ready, is saved (`save_state`: memory and devices to a file,
  with its disk); a new VM is made from each entry and timed the same way;
- clone: one golden VM (RAM in a shared file) is saved once as a clone golden; RUNS clones are
  made from it and timed the same way;
- memory: an idle entry holds no process (host memory 0) and its files on disk (the row); four
  clones running at once are measured for resident (RSS) and proportional (PSS) memory, the pages
  they share with the golden's file counted once between them.

The backend asks every VM for its banner every POLL seconds (its poll interval is set so for cold
boots too, so both sides are timed alike). Targets (issue 16): suspended p50 <= 1 s and at least
5x faster than cold; clone p50 <= 0.5 s. Not in the default `make bench` set: it boots RUNS guests
and takes a few minutes (`python -m bench warm`).

Every VM is deleted and every QEMU started under the temp dir killed in `finally`.
"""

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import median, percentile
from shoal.backends.base import Actual
from shoal.backends.qemu import savedstate
from shoal.backends.qemu.backend import QemuBackend, QemuSettings
from shoal.model.kinds import ImageSpec, VirtualMachineSpec
from shoal.testguest import TestGuest, build_test_guest

RUNS = 20
POLL = 0.02
CLONES_AT_ONCE = 4
SUSPENDED_TARGET_MS = 1000.0
CLONE_TARGET_MS = 500.0
SPEEDUP_TARGET = 5.0
MB = 1e6
Row = dict[str, Any]


def _say(text: str) -> None:
    print(f"[warm {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _spec(guest: TestGuest) -> dict[str, Any]:
    def file(path: Path) -> dict[str, Any]:
        return {"path": str(path), "digest": "sha256:" + "0" * 64, "size": 1}

    image = ImageSpec.model_validate(
        {
            "source": {
                "local": {
                    "disk": file(guest.disk),
                    "kernel": file(guest.kernel),
                    "initrd": file(guest.initrd),
                }
            },
            "boot": "kernel",
            "cmdline": guest.cmdline,
            "sshUser": guest.ssh_user,
        }
    ).model_dump(mode="json", exclude_none=True)
    fields = {"image": "test-guest", "cpu": 1, "memory": "256Mi", "disk": "1Gi"}
    spec = VirtualMachineSpec.model_validate(fields).model_dump(mode="json")
    return {**spec, "resolvedImage": image}


async def _ready(backend: QemuBackend, vm_id: str, spec: dict[str, Any]) -> float:
    """Seconds from create to the guest's banner answering, as the backend reports it."""
    began = time.monotonic()
    await backend.create(vm_id, spec)
    await backend.start(vm_id)
    while True:
        state = await backend.status(vm_id)
        if state.actual == Actual.RUNNING and state.ready:
            return time.monotonic() - began
        if state.actual == Actual.FAILED:
            raise RuntimeError(f"VM {vm_id} failed: {state.reason}: {state.message}")
        if time.monotonic() - began > 300:
            raise TimeoutError(f"VM {vm_id} not ready after 300 s: {state}")
        await asyncio.sleep(POLL / 2)


def _memory_kb(pid: int, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


async def _measure(base: Path) -> list[Row]:
    guest = build_test_guest()
    spec = _spec(guest)
    backend = QemuBackend(
        QemuSettings(state_dir=base / "node", accelerator="tcg", poll_interval=POLL, max_vms=16)
    )
    entries = backend.saved_dir
    made: list[str] = []

    def new_id() -> str:
        vm_id = f"warm-{len(made):03d}-{os.urandom(3).hex()}"
        made.append(vm_id)
        return vm_id

    try:
        cold, saves, entry_bytes = [], [], []
        for i in range(RUNS):
            vm_id = new_id()
            cold.append(await _ready(backend, vm_id, spec))
            began = time.monotonic()
            await backend.save_state(vm_id, f"e{i}")
            entry = savedstate.Entry.load(entries / f"e{i}")
            saves.append(time.monotonic() - began)
            entry_bytes.append(_du(entries / f"e{i}"))
            _say(f"cold {i + 1}/{RUNS}: ready in {cold[-1]:.2f}s; saved in {saves[-1]:.2f}s "
                 f"({entry.size / MB:.0f} MB of state)")  # fmt: skip
        suspended = []
        for i in range(RUNS):
            vm_id = new_id()
            suspended.append(await _ready(backend, vm_id, {**spec, "savedState": f"e{i}"}))
            if (await backend.status(vm_id)).message:
                raise RuntimeError(
                    f"VM {vm_id} booted cold: {(await backend.status(vm_id)).message}"
                )
            await backend.delete(vm_id)
            _say(f"suspended {i + 1}/{RUNS}: ready in {suspended[-1]:.2f}s")

        golden_vm = new_id()
        await _ready(backend, golden_vm, {**spec, "goldenMemory": True})
        await backend.save_state(golden_vm, "golden", clone=True)
        from_golden = {**spec, "savedState": "golden"}
        clone = []
        for i in range(RUNS):
            vm_id = new_id()
            clone.append(await _ready(backend, vm_id, from_golden))
            if (await backend.status(vm_id)).message:
                raise RuntimeError(
                    f"VM {vm_id} booted cold: {(await backend.status(vm_id)).message}"
                )
            await backend.delete(vm_id)
            _say(f"clone {i + 1}/{RUNS}: ready in {clone[-1]:.2f}s")
        running = [new_id() for _ in range(CLONES_AT_ONCE)]
        for vm_id in running:
            await _ready(backend, vm_id, from_golden)
        pids = [int((backend._paths(vm_id).pidfile).read_text()) for vm_id in running]
        rss = [_memory_kb(pid, "Rss") * 1024 for pid in pids]
        pss = [_memory_kb(pid, "Pss") * 1024 for pid in pids]
    finally:
        for vm_id in made:
            with contextlib.suppress(Exception):
                await backend.delete(vm_id)

    cold_ms = [t * 1000 for t in cold]
    suspended_ms = [t * 1000 for t in suspended]
    clone_ms = [t * 1000 for t in clone]
    speedup = median(cold_ms) / median(suspended_ms)
    rows: list[Row] = [
        {"name": "warm cold boot to SSH p50", "value": median(cold_ms), "unit": "ms"},
        {"name": "warm cold boot to SSH p99", "value": percentile(cold_ms, 99), "unit": "ms"},
        {
            "name": "warm suspended restore to SSH p50",
            "value": median(suspended_ms),
            "unit": "ms",
            "ok": median(suspended_ms) <= SUSPENDED_TARGET_MS,
        },
        {"name": "warm suspended restore p99", "value": percentile(suspended_ms, 99), "unit": "ms"},
        {
            "name": "warm suspended vs cold (p50)",
            "value": speedup,
            "unit": "x faster",
            "ok": speedup >= SPEEDUP_TARGET,
        },
        {
            "name": "warm clone restore to SSH p50",
            "value": median(clone_ms),
            "unit": "ms",
            "ok": median(clone_ms) <= CLONE_TARGET_MS,
        },
        {"name": "warm clone restore p99", "value": percentile(clone_ms, 99), "unit": "ms"},
        {
            "name": "warm save (suspend) p50",
            "value": median([t * 1000 for t in saves]),
            "unit": "ms",
        },
        {"name": "warm idle entry on disk", "value": median(entry_bytes) / MB, "unit": "MB"},
        {"name": "warm idle entry host memory", "value": 0.0, "unit": "MB"},
        {"name": "warm running clone RSS", "value": median(rss) / MB, "unit": "MB"},
        {"name": "warm running clone PSS", "value": median(pss) / MB, "unit": "MB"},
    ]
    return rows


def run() -> list[Row]:
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-warm-"))
    try:
        return asyncio.run(_measure(base))
    finally:
        for proc in Path("/proc").iterdir():  # any QEMU the bench left, whatever happened
            with contextlib.suppress(OSError, ValueError):
                if proc.name.isdigit() and str(base).encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
