"""A running VM's memory and devices saved to a file, and a VM started from them instead of a boot.

Saving: the guest is paused (QMP `stop`) and QEMU's migration stream is written to a file
(`migrate` to `exec:cat > FILE`); QEMU then quits. With the VM's disk overlay as it was at that
instant, the pair is an *entry*: a directory holding

    machine.json  the Machine saved (cpu, memory, boot method, image files)
    disk.qcow2    its disk overlay
    state         the migration stream: memory and device state
    entry.json    what the state fits: QEMU's version, the image, the memory and cpu, its size
                  and sha256, and its mode
    memory        (clone mode) the guest's RAM: the golden VM ran with its RAM in this shared
                  file, so the stream carries devices only (QEMU's x-ignore-shared); a clone maps
                  the file copy-on-write (share=off) and starts on an overlay of the golden disk

Restoring: QEMU starts with the same machine and `-incoming defer`, is given the file
(`migrate-incoming exec:cat FILE`), and the guest is resumed (`cont`) once the stream is in and its
sha256 (read alongside, from the page cache) matches: a truncated or corrupted file never runs.
Host ports, the NIC's host side and the sockets are the new VM's own; only the guest's memory and
devices come from the file.
"""

import asyncio
import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shoal.backends.qemu import qmp
from shoal.backends.qemu.machine import Machine

STATE_FILE = "state"
ENTRY_FILE = "entry.json"
MEMORY_FILE = "memory"  # a clone golden's RAM
HASH_CHUNK = 4 * 2**20
POLL = 0.005


class SavedStateError(Exception):
    """The state cannot be saved, or an entry cannot be restored; the message says why."""


@dataclass(frozen=True)
class Entry:
    """What a saved state fits, and how to tell the file is whole."""

    qemu_version: str
    image_digest: str | None
    base: str  # the image's disk file the overlay is on
    cpu: int
    memory_mib: int
    size: int
    sha256: str
    saved_at: float
    # suspended: used once (its disk and memory become the VM's); clone: a golden many VMs
    # start from (memory mapped copy-on-write from its file, a disk overlay on its disk).
    mode: str = "suspended"

    def save(self, directory: Path) -> None:
        (directory / ENTRY_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: Path) -> "Entry":
        return cls.load_file(directory / ENTRY_FILE)

    @classmethod
    def load_file(cls, path: Path) -> "Entry":
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise SavedStateError(f"the entry's {path.name} cannot be read: {error}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _migration_done(socket: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        reply = await qmp.execute(socket, "query-migrate")
        status = reply.get("status") if isinstance(reply, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            detail = reply.get("error-desc") or status
            raise SavedStateError(f"{what} {status}: {detail}")
        if time.monotonic() > deadline:
            raise SavedStateError(f"{what} did not finish in {timeout:.0f}s (status {status})")
        await asyncio.sleep(POLL)


async def _ignore_shared(socket: Path) -> None:
    """RAM in a shared file is not in the stream: a clone maps it from the golden's file."""
    capability = {"capability": "x-ignore-shared", "state": True}
    await qmp.execute(socket, "migrate-set-capabilities", {"capabilities": [capability]})


async def save(
    socket: Path, machine: Machine, qemu_version: str, dest: Path, *, clone: bool = False
) -> Entry:
    """Pause the guest and write its memory and devices to dest/state (with clone, its devices
    only: its memory is its shared memory file); QEMU is left paused (the caller quits it).
    Returns the entry's description, also written to dest."""
    part = dest / f"{STATE_FILE}.part"
    try:
        if clone:
            await _ignore_shared(socket)
        await qmp.execute(socket, "stop")
        await qmp.execute(socket, "migrate", {"uri": f"exec:cat > {part}"})
        await _migration_done(socket, 300.0, "saving the state")
    except qmp.QMPError as error:
        raise SavedStateError(f"saving the state: {error}") from None
    os.replace(part, dest / STATE_FILE)
    state = dest / STATE_FILE
    entry = Entry(
        qemu_version=qemu_version,
        image_digest=machine.image_digest,
        base=machine.base,
        cpu=machine.cpu,
        memory_mib=machine.memory_mib,
        size=state.stat().st_size,
        sha256=await asyncio.to_thread(sha256_of, state),
        saved_at=time.time(),
        mode="clone" if clone else "suspended",
    )
    entry.save(dest)
    return entry


def mismatch(entry: Entry, machine: Machine, qemu_version: str, state: Path) -> str | None:
    """Why the saved state cannot become this machine (None: it can), from what is cheap to
    check before starting QEMU; the sha256 is checked while QEMU reads the file."""
    if entry.qemu_version != qemu_version:
        return f"it was saved by QEMU {entry.qemu_version}, this node runs {qemu_version}"
    if entry.base != machine.base or entry.image_digest != machine.image_digest:
        return "it was saved from another image"
    if (entry.cpu, entry.memory_mib) != (machine.cpu, machine.memory_mib):
        return (
            f"it was saved with {entry.cpu} cpu and {entry.memory_mib} MiB, the VM asks for "
            f"{machine.cpu} cpu and {machine.memory_mib} MiB"
        )
    try:
        size = state.stat().st_size
    except OSError:
        return "its state file is missing"
    if size != entry.size:
        return f"its state file is {size} bytes, {entry.size} were saved (truncated or changed)"
    if entry.mode == "clone":
        memory = state.parent / MEMORY_FILE
        try:
            memory_size = memory.stat().st_size
        except OSError:
            return "its memory file is missing"
        if memory_size != entry.memory_mib * 2**20:
            return f"its memory file is {memory_size} bytes, not {entry.memory_mib} MiB"
    return None


async def restore(socket: Path, state: Path, entry: Entry, timeout: float) -> None:
    """Load state into a QEMU started with `-incoming defer` and resume the guest, once the file
    is known whole. Raises SavedStateError (QEMU is left as it is: the caller kills it)."""
    hashing = asyncio.create_task(asyncio.to_thread(sha256_of, state))
    corrupted = SavedStateError("its state file is corrupted (its sha256 differs)")
    try:
        if entry.mode == "clone":
            await _ignore_shared(socket)
        await qmp.execute(socket, "migrate-incoming", {"uri": f"exec:cat {state}"})
        await _migration_done(socket, timeout, "loading the saved state")
        if await hashing != entry.sha256:
            raise corrupted
        await qmp.execute(socket, "cont")
    except (qmp.QMPError, SavedStateError) as error:
        if error is corrupted:
            raise
        # QEMU may trip over a damaged file (and exit) before the hash is known: a damaged
        # file is the cause to tell, whatever QEMU said of it.
        with contextlib.suppress(OSError):
            if await hashing != entry.sha256:
                raise corrupted from None
        if isinstance(error, SavedStateError):
            raise
        raise SavedStateError(f"loading the saved state: {error}") from None
    finally:
        if not hashing.done():
            hashing.cancel()
