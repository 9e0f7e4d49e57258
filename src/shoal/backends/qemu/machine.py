"""What one QEMU VM is made of, kept in its state dir so a restarted agent can adopt it, and the
QEMU command line that runs it (one function per guest profile)."""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MACHINE_FILE = "machine.json"


@dataclass(frozen=True)
class Forward:
    guest: int
    host: int
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class Machine:
    """Everything needed to (re)start a VM; written once at create time."""

    vm_id: str
    cpu: int
    memory_mib: int
    guest_os: str  # linux | macos
    boot: str  # disk | kernel
    firmware: str  # bios | uefi
    kernel: str | None
    initrd: str | None
    cmdline: str
    base: str  # the image's disk, the overlay's backing file
    forwards: tuple[Forward, ...] = ()
    ssh_user: str = "root"
    network: str = "user"  # user | bridge:<name> | tap:<name>
    extra: dict[str, Any] = field(default_factory=dict)
    image_digest: str | None = None  # the node-cache image `base` is in (an OCI image)
    # Guest RAM in a file instead of anonymous memory: shared (written through: a golden VM
    # whose memory clones start from) or private (copy-on-write over a golden's file: a clone).
    memory_file: str | None = None
    memory_shared: bool = False
    # A warm-pool entry booting to be saved: QEMU runs at a lower CPU priority, so that it never
    # slows the VMs that run jobs (a resume among them).
    background: bool = False

    def save(self, directory: Path) -> None:
        path = directory / MACHINE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: Path) -> "Machine":
        data = json.loads((directory / MACHINE_FILE).read_text())
        data["forwards"] = tuple(Forward(**f) for f in data.get("forwards", []))
        return cls(**data)


@dataclass(frozen=True)
class Paths:
    """The files of one VM. Sockets go through `short`, a short link to the state dir, because a
    unix socket path may not exceed 107 bytes and state dirs can be deep."""

    root: Path
    short: Path

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def serial_log(self) -> Path:
        return self.root / "serial.log"

    @property
    def wanted(self) -> Path:
        return self.root / "wanted"

    @property
    def uefi_vars(self) -> Path:
        return self.root / "uefi-vars.fd"

    @property
    def qmp(self) -> Path:
        return self.short / "qmp.sock"

    @property
    def vnc(self) -> Path:
        return self.short / "vnc.sock"

    @property
    def console(self) -> Path:
        return self.short / "console.sock"


@dataclass(frozen=True)
class HostSetup:
    """Host-wide inputs of the command line: binary, accelerator, firmware files."""

    qemu: str
    accel: str
    uefi_code: str | None = None  # OVMF code, for firmware: uefi and macOS
    opencore: str | None = None  # OpenCore boot disk, for macOS guests
    apple_osk: str | None = None  # the SMC key isa-applesmc presents to macOS


class MachineError(ValueError):
    """The VM cannot be built on this host as described (a missing firmware file, say)."""


def _opt(value: str) -> str:
    """Escape a value for a QEMU -drive/-chardev option list (commas double)."""
    return value.replace(",", ",,")


def _common(machine: Machine, paths: Paths, host: HostSetup) -> list[str]:
    return [
        host.qemu,
        "-name", f"shoal-{machine.vm_id},process=shoal-{machine.vm_id[:8]}",
        "-accel", host.accel,
        "-smp", str(machine.cpu),
        "-m", str(machine.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-qmp", f"unix:{_opt(str(paths.qmp))},server=on,wait=off",
        "-vnc", f"unix:{_opt(str(paths.vnc))}",
        "-chardev",
        f"socket,id=serial0,path={_opt(str(paths.console))},server=on,wait=off,"
        f"logfile={_opt(str(paths.serial_log))},logappend=on",
        "-serial", "chardev:serial0",
        "-daemonize",
        "-pidfile", str(paths.pidfile),
    ]  # fmt: skip


def mac_address(vm_id: str) -> str:
    """The VM's own MAC (locally administered, QEMU's 52:54:00 prefix, the rest from its id): VMs
    on one bridge must not share one, and a VM resumed from a warm-pool entry takes its own."""
    tail = hashlib.sha256(vm_id.encode()).digest()[:3]
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in tail)


def _network(machine: Machine, model: str) -> list[str]:
    if machine.network.startswith("bridge:"):
        netdev = f"bridge,id=n0,br={machine.network.split(':', 1)[1]}"
    elif machine.network.startswith("tap:"):
        netdev = f"tap,id=n0,ifname={machine.network.split(':', 1)[1]},script=no,downscript=no"
    else:
        netdev = "user,id=n0" + "".join(
            f",hostfwd=tcp:{f.address}:{f.host}-:{f.guest}" for f in machine.forwards
        )
    mac = mac_address(machine.vm_id)
    return ["-netdev", netdev, "-device", f"{model},netdev=n0,mac={mac},romfile="]


def _uefi(paths: Paths, host: HostSetup) -> list[str]:
    if not host.uefi_code:
        raise MachineError("UEFI firmware (OVMF) is not configured on this node: set uefi_code")
    return [
        "-drive", f"if=pflash,format=raw,readonly=on,file={_opt(host.uefi_code)}",
        "-drive", f"if=pflash,format=raw,file={_opt(str(paths.uefi_vars))}",
    ]  # fmt: skip


def _memory(machine: Machine) -> tuple[list[str], str]:
    """The -object of a file-backed RAM, and what -machine then needs."""
    if machine.memory_file is None:
        return [], ""
    share = "on" if machine.memory_shared else "off"
    backend = (
        f"memory-backend-file,id=ram0,size={machine.memory_mib}M,"
        f"mem-path={_opt(machine.memory_file)},share={share}"
    )
    return ["-object", backend], ",memory-backend=ram0"


def linux_command(machine: Machine, paths: Paths, host: HostSetup) -> list[str]:
    argv = _common(machine, paths, host)
    memory, machine_option = _memory(machine)
    argv += memory
    argv += ["-machine", f"q35{machine_option}"]
    argv += ["-cpu", "host" if host.accel in ("kvm", "hvf") else "max"]
    if machine.firmware == "uefi" and machine.boot == "disk":
        argv += _uefi(paths, host)
    if machine.boot == "kernel":
        if not machine.kernel:
            raise MachineError("direct kernel boot without a kernel")
        argv += ["-kernel", machine.kernel, "-append", machine.cmdline]
        if machine.initrd:
            argv += ["-initrd", machine.initrd]
    argv += ["-drive", f"file={_opt(str(paths.disk))},if=virtio,format=qcow2,discard=unmap"]
    argv += _network(machine, "virtio-net-pci")
    argv += ["-device", "virtio-rng-pci"]
    # A display for `shoal vnc` and the web UI's screen (-nodefaults leaves none): the
    # standard VGA, whose text mode any guest and firmware draw on.
    argv += ["-device", "VGA"]
    return argv


def macos_command(machine: Machine, paths: Paths, host: HostSetup) -> list[str]:
    """macOS on an Intel host under KVM, the way Orka ran it: Q35, OVMF, an OpenCore boot disk,
    and isa-applesmc presenting the SMC key macOS checks for."""
    missing = [
        name
        for name, value in (
            ("uefi_code", host.uefi_code),
            ("opencore", host.opencore),
            ("apple_osk", host.apple_osk),
        )
        if not value
    ]
    if missing:
        raise MachineError(f"macOS guests need {', '.join(missing)} set on this node")
    assert host.opencore is not None and host.apple_osk is not None
    cpu = "Penryn,vendor=GenuineIntel,+invtsc,vmware-cpuid-freq=on,+ssse3,+sse4.2,+popcnt,"
    cpu += "+avx,+aes,+xsave,+xsaveopt,check"
    argv = _common(machine, paths, host)
    argv += ["-machine", "q35", "-cpu", cpu]
    argv += ["-device", f"isa-applesmc,osk={_opt(host.apple_osk)}", "-smbios", "type=2"]
    argv += _uefi(paths, host)
    argv += [
        "-device", "ich9-ahci,id=sata",
        "-drive", f"id=opencore,if=none,snapshot=on,format=qcow2,file={_opt(host.opencore)}",
        "-device", "ide-hd,bus=sata.2,drive=opencore",
        "-drive", f"id=system,if=none,format=qcow2,file={_opt(str(paths.disk))}",
        "-device", "ide-hd,bus=sata.3,drive=system",
        "-device", "qemu-xhci,id=xhci",
        "-device", "usb-kbd,bus=xhci.0",
        "-device", "usb-tablet,bus=xhci.0",
    ]  # fmt: skip
    argv += _network(machine, "vmxnet3")
    return argv


def command(machine: Machine, paths: Paths, host: HostSetup) -> list[str]:
    if machine.guest_os == "macos":
        return macos_command(machine, paths, host)
    return linux_command(machine, paths, host)
