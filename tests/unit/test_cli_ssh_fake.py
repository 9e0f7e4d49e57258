"""`shoal ssh` and `shoal scp` against a fake `ssh`/`scp` on PATH (the real ones run in
tests/vm): the ProxyCommand, the options, the password through SSH_ASKPASS (never on a command
line), and the remote exit code passed through."""

import os
import subprocess
from pathlib import Path

from helpers import SHOAL

FAKE = """#!/bin/sh
echo "argv: $*"
if [ -n "$SSH_ASKPASS" ]; then echo "askpass: $("$SSH_ASKPASS" "Password:")"; fi
echo "require: $SSH_ASKPASS_REQUIRE"
exit 7
"""


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("ssh", "scp"):
        fake = bin_dir / tool
        fake.write_text(FAKE)
        fake.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env}
    return subprocess.run(
        [SHOAL, *args], env=environment, capture_output=True, text=True, timeout=60
    )


def test_fake_ssh_gets_the_tunnel_the_user_and_the_password_out_of_band(tmp_path: Path) -> None:
    done = _run(tmp_path, "ssh", "vm-1", "-l", "builder", "-n", "ci", "--", "uname", "-a",
                SHOAL_SSH_PASSWORD="s3cret")  # fmt: skip
    assert done.returncode == 7  # the remote command's code
    argv = done.stdout.splitlines()[0]
    assert "ProxyCommand=" in argv and "port-forward --stdio --namespace ci vm-1 22" in argv
    assert "-l builder vm-1 -- uname -a" in argv
    assert "StrictHostKeyChecking=no" in argv
    assert "s3cret" not in argv  # never on a command line
    assert "askpass: s3cret" in done.stdout and "require: force" in done.stdout


def test_fake_scp_names_vms_by_host_and_checks_its_arguments(tmp_path: Path) -> None:
    done = _run(tmp_path, "scp", "-l", "root", "-r", "dir", "vm-2:/tmp/")
    assert done.returncode == 7
    argv = done.stdout.splitlines()[0]
    assert "port-forward --stdio %h 22" in argv and "User=root" in argv
    assert argv.endswith("-r -- dir vm-2:/tmp/")  # "--": a path is never an option
    assert " -O " not in argv  # SFTP, scp's default, unless asked
    assert "askpass" not in done.stdout
    local_only = _run(tmp_path, "scp", "-l", "root", "a", "b")
    assert local_only.returncode == 1 and "no VM:PATH" in local_only.stderr
    missing_key = _run(tmp_path, "ssh", "vm", "-l", "u", "-i", str(tmp_path / "nokey"))
    assert missing_key.returncode == 1 and "no such key file" in missing_key.stderr


def test_fake_scp_legacy_protocol_and_scp_flags_reach_scp(tmp_path: Path) -> None:
    done = _run(tmp_path, "scp", "-l", "root", "-O", "-r", "-p", "vm-3:/etc/", "out")
    assert done.returncode == 7
    argv = done.stdout.splitlines()[0]
    assert argv.endswith("-r -p -O -- vm-3:/etc/ out")
    long = _run(tmp_path, "scp", "-l", "root", "--legacy", "--", "-odd-name", "vm-3:/tmp/")
    assert long.stdout.splitlines()[0].endswith(" -O -- -odd-name vm-3:/tmp/")
