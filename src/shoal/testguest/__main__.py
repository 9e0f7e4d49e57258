"""`python -m shoal.testguest build|boot`: build the test guest (and its bootable-disk variants),
or boot it by hand."""

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.testguest.bootdisk import FIRMWARES, bootable_disk
from shoal.testguest.build import (
    OVMF_CODE,
    OVMF_VARS,
    Firmware,
    TestGuest,
    TestGuestError,
    build_test_guest,
    free_port,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.testguest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("build", "build the guest (or find it in the cache) and print its paths as JSON"),
        ("boot", "boot the guest under QEMU in the foreground, serial console on this terminal"),
    ):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--cache-dir",
            type=Path,
            help="default: $SHOAL_CACHE_DIR/test-guest or ./.cache/test-guest",
        )
        cmd.add_argument(
            "--refresh", action="store_true", help="resolve the Debian package versions again"
        )
    sub.choices["build"].add_argument(
        "--bootable",
        action="append",
        choices=FIRMWARES,
        default=[],
        help="also build the variant that this firmware boots from its own disk (repeatable)",
    )
    boot = sub.choices["boot"]
    boot.add_argument(
        "--firmware",
        choices=FIRMWARES,
        help="boot the bootable-disk variant through SeaBIOS or OVMF (default: direct kernel boot)",
    )
    boot.add_argument("--accel", default="tcg", help="QEMU accelerator (default: tcg)")
    boot.add_argument("--port", type=int, default=0, help="host port for ssh (default: a free one)")
    boot.add_argument("--memory", type=int, default=256, help="guest memory in MiB (default: 256)")
    args = parser.parse_args(argv)

    firmwares: list[Firmware] = args.bootable if args.command == "build" else []
    if args.command == "boot" and args.firmware:
        firmwares = [args.firmware]
    try:
        guest = build_test_guest(args.cache_dir, progress=_progress, refresh=args.refresh)
        disks = {fw: bootable_disk(guest, fw, progress=_progress) for fw in firmwares}
    except TestGuestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.command == "build":
        _progress("ready")
        paths: dict[str, str | dict[str, str]] = {
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "disk": str(guest.disk),
            "cmdline": guest.cmdline,
            "private_key": str(guest.private_key),
            "ssh_user": guest.ssh_user,
            "address": guest.address,
        }
        if disks:
            paths["bootable_disks"] = {fw: str(path) for fw, path in disks.items()}
        print(json.dumps(paths, indent=2))
        return 0
    firmware: Firmware | None = args.firmware
    if firmware == "uefi" and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        print(f"error: {OVMF_CODE} or {OVMF_VARS} is missing: install ovmf", file=sys.stderr)
        return 1
    port = args.port or free_port()
    base = disks[firmware] if firmware else guest.disk
    return _boot(guest, base, firmware, accel=args.accel, port=port, memory=args.memory)


def _boot(
    guest: TestGuest,
    base: Path,
    firmware: Firmware | None,
    *,
    accel: str,
    port: int,
    memory: int,
) -> int:
    with tempfile.TemporaryDirectory(prefix="shoal-test-guest-") as tmp:
        overlay = Path(tmp) / "overlay.qcow2"
        create = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base)]
        subprocess.run([*create, str(overlay)], check=True)
        uefi_vars = None
        if firmware == "uefi":
            uefi_vars = Path(tmp) / "uefi-vars.fd"
            shutil.copyfile(OVMF_VARS, uefi_vars)
        argv = guest.qemu_command(
            overlay,
            ssh_port=port,
            accel=accel,
            memory_mib=memory,
            serial="mon:stdio",
            firmware=firmware,
            uefi_vars=uefi_vars,
        )
        ssh = ["ssh", *guest.ssh_options(), "-p", str(port), f"{guest.ssh_user}@127.0.0.1"]
        print(
            f"ssh port: {port}\n"
            f"log in with: {shlex.join(ssh)}\n"
            "serial console below (root shell); `poweroff` in the guest or Ctrl-a x quits QEMU;\n"
            "the disk is a throw-away overlay.\n",
            file=sys.stderr,
            flush=True,
        )
        try:
            return subprocess.run(argv, check=False).returncode
        except KeyboardInterrupt:
            return 130


_STARTED = time.monotonic()


def _progress(line: str) -> None:
    print(f"test guest [{time.monotonic() - _STARTED:5.1f}s] {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
