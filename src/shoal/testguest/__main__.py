"""`python -m shoal.testguest build|boot`: build the test guest, or boot it by hand."""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.testguest.build import TestGuest, TestGuestError, build_test_guest, free_port


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
    boot = sub.choices["boot"]
    boot.add_argument("--accel", default="tcg", help="QEMU accelerator (default: tcg)")
    boot.add_argument("--port", type=int, default=0, help="host port for ssh (default: a free one)")
    boot.add_argument("--memory", type=int, default=256, help="guest memory in MiB (default: 256)")
    args = parser.parse_args(argv)

    try:
        guest = build_test_guest(args.cache_dir, progress=_progress, refresh=args.refresh)
    except TestGuestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.command == "build":
        _progress("ready")
        paths = {
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "disk": str(guest.disk),
            "cmdline": guest.cmdline,
            "private_key": str(guest.private_key),
            "ssh_user": guest.ssh_user,
            "address": guest.address,
        }
        print(json.dumps(paths, indent=2))
        return 0
    return _boot(guest, accel=args.accel, port=args.port or free_port(), memory=args.memory)


def _boot(guest: TestGuest, *, accel: str, port: int, memory: int) -> int:
    with tempfile.TemporaryDirectory(prefix="shoal-test-guest-") as tmp:
        overlay = guest.create_overlay(Path(tmp) / "overlay.qcow2")
        argv = guest.qemu_command(
            overlay, ssh_port=port, accel=accel, memory_mib=memory, serial="mon:stdio"
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
