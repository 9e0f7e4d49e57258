"""The QEMU command line per guest profile, the Machine record, and the accelerator probe's
boot sector: pure functions, no QEMU started."""

import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.backends.qemu import accel
from shoal.backends.qemu.machine import (
    Forward,
    HostSetup,
    Machine,
    MachineError,
    Paths,
    command,
    mac_address,
)

ROOT = Path("/var/lib/shoal/agents/node-1/qemu/vms/0123456789abcdef")
SHORT = Path("/tmp/shoal-vm-0011223344556677")
PATHS = Paths(ROOT, SHORT)
OVMF = "/usr/share/OVMF/OVMF_CODE_4M.fd"


def machine(**changes: object) -> Machine:
    fields: dict[str, object] = {
        "vm_id": "0123456789abcdef",
        "cpu": 3,
        "memory_mib": 1536,
        "guest_os": "linux",
        "boot": "kernel",
        "firmware": "bios",
        "kernel": "/images/vmlinuz",
        "initrd": "/images/initrd.img",
        "cmdline": "console=ttyS0 root=/dev/vda rw quiet",
        "base": "/images/root.qcow2",
        "forwards": (Forward(22, 40022), Forward(8080, 40080, "0.0.0.0")),
    }
    fields.update(changes)
    return Machine(**fields)


def host(**changes: object) -> HostSetup:
    fields: dict[str, object] = {"qemu": "/usr/bin/qemu-system-x86_64", "accel": "tcg"}
    fields.update(changes)
    return HostSetup(**fields)


def value(argv: list[str], flag: str) -> str:
    """The argument after the only occurrence of flag."""
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def values(argv: list[str], flag: str) -> list[str]:
    """The arguments after every occurrence of flag, in order."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def devices(argv: list[str]) -> list[str]:
    return values(argv, "-device")


# -- linux, direct kernel boot ---------------------------------------------------------------


def test_linux_kernel_boot_command() -> None:
    vm = machine()
    argv = command(vm, PATHS, host())

    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert value(argv, "-name").startswith("shoal-0123456789abcdef,")
    assert value(argv, "-kernel") == "/images/vmlinuz"
    assert value(argv, "-initrd") == "/images/initrd.img"
    assert value(argv, "-append") == "console=ttyS0 root=/dev/vda rw quiet"
    assert value(argv, "-machine") == "q35"

    # The one disk: virtio, on the overlay in the VM's dir (never the base image itself).
    drives = values(argv, "-drive")
    assert drives == [f"file={ROOT}/disk.qcow2,if=virtio,format=qcow2,discard=unmap"]
    assert "/images/root.qcow2" not in " ".join(argv)

    # User-mode network, one hostfwd per Forward, on a virtio NIC.
    assert value(argv, "-netdev") == (
        "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:0.0.0.0:40080-:8080"
    )
    mac = mac_address(vm.vm_id)
    assert f"virtio-net-pci,netdev=n0,mac={mac},romfile=" in devices(argv)
    assert mac.startswith("52:54:00:") and mac != mac_address(vm.vm_id + "x")
    assert "virtio-rng-pci" in devices(argv)
    assert "VGA" in devices(argv)  # a screen for VNC and the web UI

    # Daemonized, with its pid where the backend looks for it.
    assert "-daemonize" in argv
    assert value(argv, "-pidfile") == str(ROOT / "qemu.pid")

    # Sockets under the short link (a unix socket path is at most 107 bytes); logs in the root.
    assert value(argv, "-qmp") == f"unix:{SHORT}/qmp.sock,server=on,wait=off"
    assert value(argv, "-vnc") == f"unix:{SHORT}/vnc.sock"
    chardev = value(argv, "-chardev")
    assert chardev.startswith(f"socket,id=serial0,path={SHORT}/console.sock,server=on,wait=off,")
    assert f"logfile={ROOT}/serial.log" in chardev
    assert value(argv, "-serial") == "chardev:serial0"
    assert value(argv, "-display") == "none"
    assert "-nodefaults" in argv

    assert value(argv, "-accel") == "tcg"
    assert value(argv, "-cpu") == "max"
    assert value(argv, "-smp") == "3"
    assert value(argv, "-m") == "1536"
    assert not values(argv, "-bios")
    assert all("pflash" not in d for d in drives)


@pytest.mark.parametrize(("accelerator", "cpu"), [("tcg", "max"), ("kvm", "host"), ("hvf", "host")])
def test_cpu_model_follows_the_accelerator(accelerator: str, cpu: str) -> None:
    argv = command(machine(cpu=1, memory_mib=256), PATHS, host(accel=accelerator))
    assert value(argv, "-accel") == accelerator
    assert value(argv, "-cpu") == cpu
    assert value(argv, "-smp") == "1"
    assert value(argv, "-m") == "256"


def test_kernel_boot_without_initrd_or_forwards() -> None:
    argv = command(machine(initrd=None, forwards=()), PATHS, host())
    assert "-initrd" not in argv
    assert value(argv, "-kernel") == "/images/vmlinuz"
    assert value(argv, "-netdev") == "user,id=n0"


def test_kernel_boot_without_a_kernel_is_refused() -> None:
    with pytest.raises(MachineError, match="without a kernel"):
        command(machine(kernel=None), PATHS, host())


# -- linux, disk boot --------------------------------------------------------------------------


def test_disk_boot_with_bios() -> None:
    argv = command(machine(boot="disk", kernel=None, initrd=None, cmdline=""), PATHS, host())
    for flag in ("-kernel", "-initrd", "-append"):
        assert flag not in argv
    assert values(argv, "-drive") == [
        f"file={ROOT}/disk.qcow2,if=virtio,format=qcow2,discard=unmap"
    ]


def test_disk_boot_ignores_a_kernel_the_image_happens_to_carry() -> None:
    argv = command(machine(boot="disk"), PATHS, host())
    assert "-kernel" not in argv and "-append" not in argv


def test_disk_boot_with_uefi() -> None:
    vm = machine(boot="disk", firmware="uefi", kernel=None, initrd=None)
    argv = command(vm, PATHS, host(uefi_code=OVMF))
    drives = values(argv, "-drive")
    assert drives[:2] == [
        f"if=pflash,format=raw,readonly=on,file={OVMF}",
        f"if=pflash,format=raw,file={ROOT}/uefi-vars.fd",
    ]
    assert PATHS.uefi_vars == ROOT / "uefi-vars.fd"
    assert drives[2].startswith(f"file={ROOT}/disk.qcow2,if=virtio")
    assert "-kernel" not in argv


def test_uefi_without_firmware_names_uefi_code() -> None:
    vm = machine(boot="disk", firmware="uefi", kernel=None, initrd=None)
    with pytest.raises(MachineError, match="uefi_code"):
        command(vm, PATHS, host())


def test_uefi_with_kernel_boot_needs_no_firmware() -> None:
    """Direct kernel boot does not go through the firmware, so no pflash is added."""
    argv = command(machine(firmware="uefi"), PATHS, host())
    assert all("pflash" not in d for d in values(argv, "-drive"))


# -- macOS -------------------------------------------------------------------------------------

MAC_HOST = {"accel": "kvm", "uefi_code": OVMF, "opencore": "/fw/OpenCore.qcow2", "apple_osk": "k3y"}


def test_macos_command() -> None:
    vm = machine(guest_os="macos", boot="disk", firmware="uefi", kernel=None, initrd=None)
    argv = command(vm, PATHS, host(**MAC_HOST))
    assert value(argv, "-machine") == "q35"
    assert value(argv, "-cpu").startswith("Penryn,vendor=GenuineIntel,")
    assert "isa-applesmc,osk=k3y" in devices(argv)
    drives = values(argv, "-drive")
    assert f"if=pflash,format=raw,readonly=on,file={OVMF}" in drives
    assert f"if=pflash,format=raw,file={ROOT}/uefi-vars.fd" in drives
    opencore = [d for d in drives if d.startswith("id=opencore,")]
    assert opencore == ["id=opencore,if=none,snapshot=on,format=qcow2,file=/fw/OpenCore.qcow2"]
    assert f"id=system,if=none,format=qcow2,file={ROOT}/disk.qcow2" in drives
    assert "ide-hd,bus=sata.2,drive=opencore" in devices(argv)
    assert "ide-hd,bus=sata.3,drive=system" in devices(argv)
    assert any(d.startswith("vmxnet3,netdev=n0,mac=52:54:00:") for d in devices(argv))
    assert not any(d.startswith("virtio-net") for d in devices(argv))
    assert value(argv, "-netdev").startswith("user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22")
    assert "-kernel" not in argv
    assert "-daemonize" in argv and value(argv, "-smp") == "3" and value(argv, "-m") == "1536"


@pytest.mark.parametrize(
    "absent",
    [
        ("uefi_code",),
        ("opencore",),
        ("apple_osk",),
        ("uefi_code", "apple_osk"),
        ("uefi_code", "opencore", "apple_osk"),
    ],
)
def test_macos_names_exactly_the_missing_host_files(absent: tuple[str, ...]) -> None:
    vm = machine(guest_os="macos", boot="disk", firmware="uefi", kernel=None, initrd=None)
    setup = host(**{**MAC_HOST, **dict.fromkeys(absent)})
    with pytest.raises(MachineError) as caught:
        command(vm, PATHS, setup)
    message = str(caught.value)
    assert f"need {', '.join(absent)} set" in message
    for name in {"uefi_code", "opencore", "apple_osk"} - set(absent):
        assert name not in message


# -- other networks ----------------------------------------------------------------------------


def test_bridge_network() -> None:
    argv = command(machine(network="bridge:br0"), PATHS, host())
    assert value(argv, "-netdev") == "bridge,id=n0,br=br0"
    assert "hostfwd" not in " ".join(argv)
    assert any(d.startswith("virtio-net-pci,netdev=n0,mac=") for d in devices(argv))


def test_tap_network() -> None:
    argv = command(machine(network="tap:tap7"), PATHS, host())
    assert value(argv, "-netdev") == "tap,id=n0,ifname=tap7,script=no,downscript=no"
    assert "hostfwd" not in " ".join(argv)


def test_macos_on_a_bridge_keeps_vmxnet3() -> None:
    vm = machine(guest_os="macos", boot="disk", network="bridge:br1")
    argv = command(vm, PATHS, host(**MAC_HOST))
    assert value(argv, "-netdev") == "bridge,id=n0,br=br1"
    assert any(d.startswith("vmxnet3,netdev=n0,mac=52:54:00:") for d in devices(argv))


# -- escaping ----------------------------------------------------------------------------------


def test_commas_in_paths_are_doubled_inside_option_lists() -> None:
    paths = Paths(Path("/data/a,b/vms/x"), Path("/tmp/s,1"))
    vm = machine(boot="disk", firmware="uefi", kernel=None, initrd=None)
    argv = command(vm, paths, host(uefi_code="/fw/OVMF,CODE.fd"))
    drives = values(argv, "-drive")
    assert "if=pflash,format=raw,readonly=on,file=/fw/OVMF,,CODE.fd" in drives
    assert "if=pflash,format=raw,file=/data/a,,b/vms/x/uefi-vars.fd" in drives
    assert "file=/data/a,,b/vms/x/disk.qcow2,if=virtio,format=qcow2,discard=unmap" in drives
    assert value(argv, "-qmp") == "unix:/tmp/s,,1/qmp.sock,server=on,wait=off"
    assert value(argv, "-vnc") == "unix:/tmp/s,,1/vnc.sock"
    chardev = value(argv, "-chardev")
    assert "path=/tmp/s,,1/console.sock," in chardev
    assert "logfile=/data/a,,b/vms/x/serial.log," in chardev
    # Plain arguments are not option lists and are passed as they are.
    assert value(argv, "-pidfile") == "/data/a,b/vms/x/qemu.pid"


def test_commas_in_macos_files_are_doubled() -> None:
    vm = machine(guest_os="macos", boot="disk")
    setup = host(**{**MAC_HOST, "opencore": "/fw/Open,Core.qcow2", "apple_osk": "a,b"})
    argv = command(vm, PATHS, setup)
    assert "isa-applesmc,osk=a,,b" in devices(argv)
    assert any(d.endswith("file=/fw/Open,,Core.qcow2") for d in values(argv, "-drive"))


def test_kernel_path_with_a_comma_is_passed_as_is() -> None:
    argv = command(machine(kernel="/images/a,b/vmlinuz"), PATHS, host())
    assert value(argv, "-kernel") == "/images/a,b/vmlinuz"


# -- machine.json ------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    vm = machine(extra={"note": "x", "n": [1, 2]})
    vm.save(tmp_path)
    assert Machine.load(tmp_path) == vm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["machine.json"]


ports = st.integers(min_value=1, max_value=65535)
forwards = st.lists(
    st.builds(Forward, guest=ports, host=ports, address=st.sampled_from(["127.0.0.1", "0.0.0.0"])),
    max_size=8,
).map(tuple)
text = st.text(alphabet=string.printable, max_size=40)


@given(
    forwards=forwards,
    cpu=st.integers(min_value=1, max_value=256),
    memory_mib=st.integers(min_value=1, max_value=2**22),
    guest_os=st.sampled_from(["linux", "macos"]),
    boot=st.sampled_from(["disk", "kernel"]),
    firmware=st.sampled_from(["bios", "uefi"]),
    kernel=st.none() | text,
    cmdline=text,
    network=st.sampled_from(["user", "bridge:br0", "tap:tap0"]),
)
def test_save_load_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory,
    forwards: tuple[Forward, ...],
    cpu: int,
    memory_mib: int,
    guest_os: str,
    boot: str,
    firmware: str,
    kernel: str | None,
    cmdline: str,
    network: str,
) -> None:
    directory = tmp_path_factory.mktemp("machine")
    vm = machine(
        forwards=forwards,
        cpu=cpu,
        memory_mib=memory_mib,
        guest_os=guest_os,
        boot=boot,
        firmware=firmware,
        kernel=kernel,
        cmdline=cmdline,
        network=network,
    )
    vm.save(directory)
    loaded = Machine.load(directory)
    assert loaded == vm
    assert isinstance(loaded.forwards, tuple)
    assert all(isinstance(f, Forward) for f in loaded.forwards)
    vm.save(directory)  # saving again replaces the file, leaving no temporary behind
    assert [p.name for p in directory.iterdir()] == ["machine.json"]


# -- accelerator probe -------------------------------------------------------------------------


def test_probe_disk_is_a_boot_sector_that_signals_each_stage_then_exits_qemu() -> None:
    sector = accel.probe_disk()
    assert len(sector) == 512
    assert sector[510:] == b"\x55\xaa"
    code = sector[:510].rstrip(b"\x00")
    # mov al, <marker>; out 0xe9, al -- the debug console, in order: C, T, E
    markers = [
        code[i + 1 : i + 2]
        for i in range(len(code) - 3)
        if code[i] == 0xB0 and code[i + 2 : i + 4] == b"\xe6\xe9"
    ]
    assert markers == [b"C", b"T", b"E"]
    # mov al, 0x31; out 0xf4, al; cli; hlt -- isa-debug-exit, last
    assert code.endswith(bytes([0xB0, 0x31, 0xE6, 0xF4, 0xFA, 0xF4]))
    assert b"\xfb" in code and b"\xf4" in code  # sti, hlt: it waits for timer interrupts
    assert accel.PROBE_EXIT_CODE == 0x31 * 2 + 1


def test_probe_command_boots_that_sector_with_the_exit_device_and_debug_console(
    tmp_path: Path,
) -> None:
    argv = accel.probe_command("qemu", "kvm", tmp_path / "probe.img")
    assert value(argv, "-accel") == "kvm"
    assert value(argv, "-drive") == f"file={tmp_path}/probe.img,format=raw,if=ide"
    assert value(argv, "-debugcon") == "stdio"
    assert "isa-debug-exit,iobase=0xf4,iosize=0x04" in values(argv, "-device")


def test_hardware_candidate(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    assert accel.hardware_candidate("linux", device) == (
        None,
        f"kvm is not available (no {device})",
    )
    device.touch()
    assert accel.hardware_candidate("linux", device) == ("kvm", "")
    assert accel.hardware_candidate("darwin", device) == ("hvf", "")
    assert accel.hardware_candidate("freebsd", device)[0] is None
