"""Which accelerator actually runs guests here: probed by booting one, never assumed.

/dev/kvm can exist and still hang every guest (nested virtualisation gone wrong), so each candidate
boots a one-sector guest that writes to QEMU's isa-debug-exit port; the first candidate whose QEMU
exits with that guest's code in time wins. TCG (pure emulation) works everywhere and comes last.

A hardware accelerator must also be quick: emulation runs the probe in well under a second, and a
KVM that needs seconds for it (seen on a nested host where real guests then hang at boot) is
worse than emulation, so it gets HARDWARE_BUDGET seconds and no more.
"""

import asyncio
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# mov al, 0x31; out 0xf4, al; cli; hlt -- isa-debug-exit turns the byte into exit code 0x31*2+1.
_PROBE_CODE = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xFA, 0xF4])
PROBE_EXIT_CODE = 0x31 * 2 + 1
PROBE_TIMEOUT = 20.0
HARDWARE_BUDGET = 3.0


def probe_disk() -> bytes:
    """A 512-byte MBR boot sector whose only job is to make QEMU exit with PROBE_EXIT_CODE."""
    sector = bytearray(512)
    sector[: len(_PROBE_CODE)] = _PROBE_CODE
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def candidates(platform: str = sys.platform) -> list[str]:
    if platform == "darwin":
        return ["hvf", "tcg"]
    return ["kvm", "tcg"]


def probe_command(qemu: str, accel: str, disk: Path) -> list[str]:
    return [
        qemu,
        "-accel", accel,
        "-machine", "pc",
        "-m", "16",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-drive", f"file={disk},format=raw,if=ide",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]  # fmt: skip


async def works(qemu: str, accel: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """(True, "") when a guest runs under accel; else (False, why)."""
    with tempfile.TemporaryDirectory(prefix="shoal-accel-") as tmp:
        disk = Path(tmp) / "probe.img"
        disk.write_bytes(probe_disk())
        try:
            process = await asyncio.create_subprocess_exec(
                *probe_command(qemu, accel, disk),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            return False, f"{qemu} is not installed"
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return False, f"a guest under {accel} did not finish booting in {timeout:.0f}s"
        if process.returncode == PROBE_EXIT_CODE:
            return True, ""
        detail = stderr.decode(errors="replace").strip().splitlines()
        return False, f"exit {process.returncode}: {detail[-1] if detail else 'no message'}"


async def detect(qemu: str, wanted: str = "auto") -> str:
    """The accelerator to use: `wanted` if it works (or is not auto), else the first that works.

    Raises RuntimeError when none works (QEMU missing or broken)."""
    choices = candidates() if wanted == "auto" else [wanted]
    reasons = []
    for accel in choices:
        ok, why = await works(qemu, accel, PROBE_TIMEOUT if accel == "tcg" else HARDWARE_BUDGET)
        if ok:
            log.info("accelerator %s works", accel)
            return accel
        log.info("accelerator %s does not work: %s", accel, why)
        reasons.append(f"{accel}: {why}")
    raise RuntimeError("no accelerator runs guests here (" + "; ".join(reasons) + ")")
