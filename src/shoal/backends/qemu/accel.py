"""Which accelerator runs guests here: decided once per process from what a probe guest does
under each candidate, never assumed and never decided by a fixed time budget.

/dev/kvm can exist and still be useless. On the nested hosts this project's CI runs on, KVM starts
a guest only after ~5 s and then runs it about a thousand times slower than emulation (a loop TCG
runs in 0.1 s took 109 s), so real guests seem to hang. A fixed budget ("KVM must answer in 3 s")
passes or fails there by a few milliseconds. Instead, every candidate runs the same probe guest,
a boot sector that

1. writes 'C' to the debug console, runs a loop that reads and writes memory, writes 'T';
2. waits with interrupts on (sti; hlt) for two ticks of the BIOS timer, then writes 'E';
3. exits QEMU through isa-debug-exit with PROBE_EXIT_CODE.

TCG runs it first and is the yardstick. A hardware accelerator is taken only when it runs the whole
probe (so it starts guests, runs their code and delivers their timer interrupts) and its loop is at
least HARDWARE_SPEEDUP times faster than TCG's. The margins are wide on purpose: a healthy KVM runs
the loop 5-20 times faster than TCG, the broken one above hundreds of times slower, so neither
answer sits near the threshold. The other deadlines only tell a hang from a slow start; missing one
means the candidate fails, which is also what its speed would decide.
"""

import asyncio
import logging
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from shoal.backends import processes

log = logging.getLogger(__name__)

ACCELERATORS = ("kvm", "hvf", "tcg")
KVM_DEVICE = Path("/dev/kvm")
PROBE_EXIT_CODE = 0x31 * 2 + 1  # isa-debug-exit turns the byte 0x31 into this exit code
HARDWARE_SPEEDUP = 2.0
START_DEADLINE = 30.0  # launch to the first marker: QEMU and the firmware came up
LOOP_DEADLINE = 60.0  # TCG's loop; a hardware accelerator gets TCG's time / HARDWARE_SPEEDUP
TIMER_DEADLINE = 5.0  # two BIOS ticks are ~0.1 s under any accelerator
EXIT_DEADLINE = 5.0

# Real mode, loaded at 0:7c00 by the BIOS. Assembled from:
#   cli; xor ax,ax; mov ds,ax; mov dx,0x1000; mov es,dx
#   mov al,'C'; out 0xe9,al
#   mov ecx,0x04000000; xor eax,eax
# 1: mov di,cx; and di,0x7ffc; add es:[di],ecx; xor eax,es:[di+4]; dec ecx; jnz 1b
#   mov al,'T'; out 0xe9,al
#   sti; mov bx,[0x46c]                      ; the BIOS tick counter
# 2: hlt; mov ax,[0x46c]; sub ax,bx; cmp ax,2; jb 2b
#   mov al,'E'; out 0xe9,al
#   mov al,0x31; out 0xf4,al; cli; hlt
_PROBE_CODE = bytes.fromhex(
    "fa31c08ed8ba00108ec2b043e6e966b9000000046631c089cf81e7fc7f2666010d26663345046649"
    "75edb054e6e9fb8b1e6c04f4a16c0429d883f80272f5b045e6e9b031e6f4faf4"
)


def probe_disk() -> bytes:
    """A 512-byte MBR boot sector holding the probe guest."""
    sector = bytearray(512)
    sector[: len(_PROBE_CODE)] = _PROBE_CODE
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def probe_command(qemu: str, accel: str, disk: Path) -> list[str]:
    return [
        qemu,
        "-accel", accel,
        "-machine", "pc",
        "-m", "16",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-debugcon", "stdio",
        "-drive", f"file={disk},format=raw,if=ide",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]  # fmt: skip


@dataclass(frozen=True)
class ProbeRun:
    ok: bool
    loop_seconds: float | None = None  # 'C' to 'T', when the loop finished
    why: str = ""  # why not ok
    too_slow: bool = False  # its loop outlasted the deadline given (the guest was running)


@dataclass(frozen=True)
class Accelerator:
    name: str
    reason: str  # why it was chosen, for the operator (node status, startup banner)


class _Quit(Exception):
    """QEMU ended before the probe guest got as far as it should."""


async def _marker(process: asyncio.subprocess.Process, want: bytes, deadline: float) -> None:
    """Wait up to deadline seconds for the probe guest to write `want` (TimeoutError if not)."""
    assert process.stdout is not None
    got = await asyncio.wait_for(process.stdout.read(1), deadline)
    if got != want:
        raise _Quit(f"the probe guest wrote {got!r} where {want!r} was due" if got else "")


async def run_probe(
    qemu: str, accel: str, loop_deadline: float = LOOP_DEADLINE, *, whole: bool = True
) -> ProbeRun:
    """Run the probe guest under accel; a loop slower than loop_deadline ends it (not ok).
    With whole=False it only has to start running guest code (its first marker)."""
    hangs = {
        "start": f"did not start in {START_DEADLINE:.0f} s",
        "loop": f"did not finish its loop in {loop_deadline:.3f} s",
        "timer": f"got no timer interrupt in {TIMER_DEADLINE:.0f} s",
        "exit": f"did not exit in {EXIT_DEADLINE:.0f} s",
    }
    with tempfile.TemporaryDirectory(prefix="shoal-accel-") as tmp:
        disk = Path(tmp) / "probe.img"
        disk.write_bytes(probe_disk())
        try:
            process = await asyncio.create_subprocess_exec(
                *probe_command(qemu, accel, disk),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            return ProbeRun(False, why=f"{qemu} is not installed")
        loop_seconds: float | None = None
        stage, hung, wrong = "start", False, ""
        try:
            await _marker(process, b"C", START_DEADLINE)
            if whole:
                stage, began = "loop", time.monotonic()
                await _marker(process, b"T", loop_deadline)
                stage, loop_seconds = "timer", time.monotonic() - began
                await _marker(process, b"E", TIMER_DEADLINE)
                stage = "exit"
                await asyncio.wait_for(process.wait(), EXIT_DEADLINE)
            stage = "done"
        except TimeoutError:
            hung = True
        except _Quit as quit:
            wrong = str(quit)
        finally:
            processes.kill(process)
            assert process.stderr is not None
            said = (await process.stderr.read()).decode(errors="replace").strip().splitlines()
            await process.wait()
    if hung:
        return ProbeRun(False, loop_seconds, f"the probe guest {hangs[stage]}", stage == "loop")
    if wrong:
        return ProbeRun(False, loop_seconds, wrong)
    if stage != "done" or (whole and process.returncode != PROBE_EXIT_CODE):
        message = said[-1] if said else "no message"
        return ProbeRun(False, loop_seconds, f"QEMU exited {process.returncode}: {message}")
    return ProbeRun(True, loop_seconds)


def hardware_candidate(platform: str, kvm_device: Path) -> tuple[str | None, str]:
    """The hardware accelerator to try here, or None and why there is none."""
    if platform == "darwin":
        return "hvf", ""
    if platform.startswith("linux"):
        if kvm_device.exists():
            return "kvm", ""
        return None, f"kvm is not available (no {kvm_device})"
    return None, f"no hardware accelerator is known on {platform}"


async def _probe_all(qemu: str, platform: str, kvm_device: Path) -> Accelerator:
    hardware, absent = hardware_candidate(platform, kvm_device)
    tcg = await run_probe(qemu, "tcg")
    log.info("accelerator probe: tcg %s", tcg)
    if hardware is None:
        if not tcg.ok:
            raise RuntimeError(f"no accelerator runs guests here (tcg: {tcg.why}; {absent})")
        return Accelerator("tcg", absent)
    yardstick = tcg.loop_seconds if tcg.ok else None
    limit = LOOP_DEADLINE if yardstick is None else yardstick / HARDWARE_SPEEDUP
    fast = await run_probe(qemu, hardware, limit)
    log.info("accelerator probe: %s %s", hardware, fast)
    if fast.ok and yardstick is None:
        return Accelerator(hardware, f"{hardware} runs guests and tcg does not ({tcg.why})")
    if fast.ok:
        assert fast.loop_seconds is not None and yardstick is not None
        speedup = yardstick / max(fast.loop_seconds, 1e-6)
        return Accelerator(
            hardware,
            f"the probe guest ran under {hardware} with timer interrupts, its loop {speedup:.0f}x"
            f" faster than under emulation ({fast.loop_seconds:.3f} s against {yardstick:.3f} s)",
        )
    if not tcg.ok:
        raise RuntimeError(
            f"no accelerator runs guests here (tcg: {tcg.why}; {hardware}: {fast.why})"
        )
    if fast.too_slow:
        return Accelerator(
            "tcg",
            f"{hardware} is no faster than emulation here: the probe guest's loop, done in"
            f" {yardstick:.3f} s under tcg, was not done after {limit:.3f} s under {hardware}",
        )
    return Accelerator("tcg", f"{hardware} does not run guests here: {fast.why}")


_decided: dict[tuple[str, str], Accelerator] = {}
_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = (
    weakref.WeakKeyDictionary()
)


async def decide(
    qemu: str,
    wanted: str = "auto",
    *,
    platform: str | None = None,
    kvm_device: Path | None = None,
) -> Accelerator:
    """The accelerator guests run under: `wanted` when it is not auto (no probe), else the one the
    probes choose. Decided once per process and QEMU binary: every node and every later call get
    the same answer, so nothing flips. Raises RuntimeError when QEMU runs no guest at all (that
    answer is not kept: QEMU may be installed later), ValueError for an unknown accelerator."""
    if wanted != "auto" and wanted not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {wanted!r}: choose auto, {', '.join(ACCELERATORS)}")
    if wanted != "auto":
        return Accelerator(wanted, f"chosen with --accel {wanted}; not probed")
    key = (qemu, wanted)
    if key in _decided:
        return _decided[key]
    lock = _locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        if key not in _decided:
            _decided[key] = await _probe_all(
                qemu, platform or sys.platform, kvm_device or KVM_DEVICE
            )
            log.info("accelerator %s: %s", _decided[key].name, _decided[key].reason)
        return _decided[key]


def forget() -> None:
    """Drop the decisions this process made (tests that decide again with other QEMUs)."""
    _decided.clear()


async def starts_guests(qemu: str, accel: str) -> ProbeRun:
    """Whether guests still start under accel: the probe up to its first marker, enough to tell
    a working accelerator from one that stopped working (QEMU refuses it, or the guest never
    runs). Not a speed test: it never changes the decision, it only tells the node's health."""
    return await run_probe(qemu, accel, whole=False)
