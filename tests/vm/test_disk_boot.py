"""Images that boot from their own disk (`boot: disk`), the way real images do: the test guest's
bootable-disk variants (docs/test-guest.md) through the qemu backend, once with SeaBIOS
(MBR + syslinux) and once with OVMF (GPT + an EFI system partition + syslinux.efi), each until
the guest answers the real OpenSSH client, then powered off and deleted.

Like tests/vm/test_qemu_backend.py, the backend is driven directly (no controller, no agent): the
agent's `--uefi-code` is QemuSettings.uefi_code here. Nothing may outlive a test, passed or
failed: no QEMU process, no VM state dir, no /tmp/shoal-vm-* link.
"""

import asyncio
import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_until
from qemu_dev import guest_ssh, qemu_pids
from shoal.backends.base import Actual, VMState
from shoal.backends.qemu import QemuBackend, QemuSettings
from shoal.backends.qemu import backend as qemu_backend
from shoal.backends.qemu.machine import Machine
from shoal.model.kinds import ImageSpec, VirtualMachineSpec
from shoal.testguest import OVMF_CODE, OVMF_VARS, READY_LINE, Firmware, TestGuest, bootable_disk
from shoal.testguest.bootdisk import LDLINUX_E64, MBR_BIN, SYSLINUX_EFI

# TCG on two shared cores: SeaBIOS + syslinux boot in ~10 s, OVMF in ~20 s, alone.
BOOT_TIMEOUT = 300.0
NO_DIGEST = "sha256:" + "0" * 64


def _have(program: str) -> bool:
    """On PATH, or in the sbin dirs a non-root PATH may lack (mkfs.fat, sfdisk)."""
    return bool(shutil.which(program)) or any(
        os.access(f"{d}/{program}", os.X_OK) for d in ("/usr/sbin", "/sbin")
    )


COMMON = ("qemu-system-x86_64", "qemu-img", "ssh", "mkfs.fat", "sfdisk", "mcopy", "mmd")
NEEDS: dict[str, tuple[tuple[str, ...], tuple[Path, ...], str]] = {
    "bios": (
        (*COMMON, "syslinux"),
        (MBR_BIN,),
        "needs QEMU, the OpenSSH client, syslinux, mtools, dosfstools and fdisk (make system-deps)",
    ),
    "uefi": (
        COMMON,
        (SYSLINUX_EFI, LDLINUX_E64, OVMF_CODE, OVMF_VARS),
        "needs QEMU, the OpenSSH client, syslinux-efi, ovmf, mtools, dosfstools and fdisk "
        "(make system-deps)",
    ),
}


def _firmware(name: Firmware) -> Any:
    programs, files, reason = NEEDS[name]
    missing = not all(map(_have, programs)) or not all(f.is_file() for f in files)
    return pytest.param(name, id=name, marks=pytest.mark.skipif(missing, reason=reason))


# -- what a test leaves behind (the pattern of test_qemu_backend.py) ----------------------------


@dataclass
class Lab:
    base: Path
    vm_ids: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.base / "node"

    def new_id(self) -> str:
        vm_id = uuid.uuid4().hex
        self.vm_ids.append(vm_id)
        return vm_id

    def settings(self, **changes: Any) -> QemuSettings:
        values: dict[str, Any] = {
            "accelerator": "tcg",
            "boot_timeout": BOOT_TIMEOUT,
            "poll_interval": 0.2,
            "stop_timeout": 60.0,
        }
        values.update(changes)
        return QemuSettings(state_dir=self.state_dir, **values)

    def links(self) -> list[Path]:
        return [
            link
            for vm_id in self.vm_ids
            if (link := qemu_backend._short_link(self.state_dir / "vms" / vm_id)).is_symlink()
            or link.exists()
        ]

    def vm_dirs(self) -> list[Path]:
        vms = self.state_dir / "vms"
        return list(vms.iterdir()) if vms.is_dir() else []

    def leftovers(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {
            "processes": qemu_pids(self.vm_ids),
            "vm dirs": self.vm_dirs(),
            "links": self.links(),
        }
        return {what: items for what, items in found.items() if items}

    def reap(self) -> None:
        for pid in qemu_pids(self.vm_ids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not qemu_pids(self.vm_ids), timeout=20, what="QEMUs to exit")
        for link in self.links():
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        for vm_dir in self.vm_dirs():
            shutil.rmtree(vm_dir, ignore_errors=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.reap()


# -- specs and helpers -------------------------------------------------------------------------


def disk_image_spec(disk: Path, firmware: Firmware, guest: TestGuest) -> dict[str, Any]:
    """The Image `shoal image import DISK --boot disk --firmware F` makes, as the agent sees it."""
    spec = {
        "source": {"local": {"disk": {"path": str(disk), "digest": NO_DIGEST, "size": 1}}},
        "boot": "disk",
        "firmware": firmware,
        "os": "linux",
        "sshUser": guest.ssh_user,
    }
    image: dict[str, Any] = ImageSpec.model_validate(spec).model_dump(
        mode="json", exclude_none=True
    )
    return image


def vm_spec(image: dict[str, Any]) -> dict[str, Any]:
    # The VM's disk is larger than the image's: the overlay grows, and the GPT's backup header
    # is no longer at the end of the disk, as with any real image given a bigger disk.
    fields = {"image": "bootable", "cpu": 1, "memory": "256Mi", "disk": "1Gi"}
    spec = VirtualMachineSpec.model_validate(fields).model_dump(mode="json")
    return {**spec, "resolvedImage": image}


async def wait_for(backend: QemuBackend, vm_id: str, wanted: Actual) -> VMState:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOOT_TIMEOUT
    state = await backend.status(vm_id)
    while state.actual != wanted:
        if state.actual == Actual.FAILED or loop.time() > deadline:
            log = backend.serial_log(vm_id)
            console = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"VM {vm_id} not {wanted}: {state}\nconsole:\n{console}")
        await asyncio.sleep(0.2)
        state = await backend.status(vm_id)
    return state


# What the guest says about how it booted: its kernel command line (syslinux adds BOOT_IMAGE and
# initrd), the root filesystem's device, whether the kernel came through UEFI, and the partitions.
PROBE = (
    "cat /proc/cmdline; "
    'awk \'$2 == "/" {print "root=" $1}\' /proc/mounts; '
    "if [ -d /sys/firmware/efi ]; then echo firmware=uefi; else echo firmware=bios; fi; "
    "echo partitions=$(ls /sys/block/vda | grep '^vda[0-9]' | sort | tr '\\n' ' '); "
    "echo $((6 * 7))"
)


@pytest.mark.parametrize("firmware", [_firmware("bios"), _firmware("uefi")])
def test_an_image_boots_from_its_own_disk(
    lab: Lab, guest_image: TestGuest, firmware: Firmware
) -> None:
    disk = bootable_disk(guest_image, firmware)
    uefi = firmware == "uefi"
    # The agent's --uefi-code; the backend copies OVMF_VARS_4M.fd from next to it.
    settings = lab.settings(uefi_code=str(OVMF_CODE) if uefi else None)
    spec = vm_spec(disk_image_spec(disk, firmware, guest_image))

    async def scenario() -> None:
        backend = QemuBackend(settings)
        vm_id = lab.new_id()
        try:
            await backend.create(vm_id, spec)
            paths = backend._paths(vm_id)
            machine = Machine.load(paths.root)
            assert (machine.boot, machine.firmware, machine.kernel) == ("disk", firmware, None)
            assert machine.base == str(disk)
            if uefi:
                assert paths.uefi_vars.read_bytes() == OVMF_VARS.read_bytes()
            else:
                assert not paths.uefi_vars.exists()

            await backend.start(vm_id)
            assert (await backend.status(vm_id)).actual == Actual.STARTING
            [pid] = qemu_pids([vm_id])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            assert "-kernel" not in argv and "-initrd" not in argv, "no direct kernel boot"
            pflash = [arg for arg in argv if "if=pflash" in arg]
            if uefi:
                assert len(pflash) == 2 and f"file={OVMF_CODE}" in pflash[0]
                assert pflash[1].endswith(f"file={paths.uefi_vars}")
            else:
                assert pflash == [], "SeaBIOS, QEMU's default"

            running = await wait_for(backend, vm_id, Actual.RUNNING)
            assert running.ready
            address, port = running.ports[22]
            ran = await asyncio.to_thread(guest_ssh, guest_image, port, PROBE, address)
            assert ran.returncode == 0, ran.stderr
            lines = ran.stdout.splitlines()
            cmdline = lines[0].split()
            assert "BOOT_IMAGE=/vmlinuz" in cmdline and "initrd=/initrd.img" in cmdline, lines
            assert "root=/dev/vda2" in cmdline
            assert lines[1:] == [
                "root=/dev/vda2",
                f"firmware={firmware}",
                "partitions=vda1 vda2",
                "42",
            ]
            failed = await asyncio.to_thread(guest_ssh, guest_image, port, "exit 7", address)
            assert failed.returncode == 7

            await backend.stop(vm_id)
            stopped = await backend.status(vm_id)
            assert stopped.actual == Actual.STOPPED and not stopped.ready
            assert qemu_pids([vm_id]) == []
            console = backend.serial_log(vm_id).read_text(errors="replace")
            assert READY_LINE in console
            if not uefi:
                assert "SYSLINUX" in console, "syslinux's banner (SERIAL 0 in syslinux.cfg)"
            # Powered off by the guest on the ACPI power button, not quit after the timeout.
            assert "shoal-test-guest: powering off" in console
        finally:
            await backend.delete(vm_id)
        assert (await backend.status(vm_id)).actual == Actual.ABSENT

    asyncio.run(scenario())
    assert lab.leftovers() == {}
