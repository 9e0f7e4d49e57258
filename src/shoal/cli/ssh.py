"""`shoal ssh` and `shoal scp`: the real OpenSSH client, reaching the VM through a tunnel
(`ProxyCommand shoal port-forward --stdio VM 22`), so the VM's host needs no open port.

The user comes from --user, else the VM's image (its sshUser), else root. Authentication is
OpenSSH's own: --identity, the keys and agent ssh finds, or --password (handed to ssh through
SSH_ASKPASS, never on a command line). VMs are ephemeral and get fresh host keys, so host keys are
not recorded."""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.common import CliError, ContextOpt, NamespaceOpt, cli_module, connect
from shoal.errors import NotFound
from shoal.model.meta import DNS_NAME

SSH_PORT = 22
EPHEMERAL_HOST_KEYS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
]  # fmt: skip
ASKPASS = '#!/bin/sh\nprintf "%s\\n" "$SHOAL_SSH_PASSWORD"\n'

UserOpt = Annotated[
    str | None,
    typer.Option("--user", "-l", help="Guest user; default: the image's sshUser, else root."),
]
IdentityOpt = Annotated[
    Path | None,
    typer.Option("--identity", "-i", help="Private key file for ssh.", show_default=False),
]
PasswordOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SHOAL_SSH_PASSWORD",
        help="Password for the guest user (or set SHOAL_SSH_PASSWORD).",
        show_default=False,
    ),
]
SshOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ssh-option", "-o", help="Extra ssh -o option (repeatable).", show_default=False
    ),
]


def _guest_user(context: str | None, namespace: str | None, vm: str) -> str:
    with connect(context, namespace) as target:
        obj = target.client.get("virtualmachines", vm, target.namespace)
        image = (obj.get("spec") or {}).get("image") or ""
        named = bool(DNS_NAME.fullmatch(image))  # an Image's name, not an OCI reference
        try:
            image_obj = target.client.get("images", image) if named else {}
        except NotFound:
            image_obj = {}
    return str((image_obj.get("spec") or {}).get("sshUser") or "root")


def _proxy_command(context: str | None, namespace: str | None, vm: str) -> str:
    argv = [sys.executable, "-m", cli_module(), "port-forward", "--stdio"]
    if context:
        argv += ["--context", context]
    if namespace:
        argv += ["--namespace", namespace]
    # vm may be ssh's %h (the host name is the VM's name), so one ProxyCommand serves scp
    # between two VMs too; shlex leaves % unquoted.
    return shlex.join([*argv, vm, str(SSH_PORT)])


def _run(argv: list[str], password: str | None) -> int:
    tool = argv[0]
    if shutil.which(tool) is None:
        raise CliError(f"{tool} not found: install the OpenSSH client")
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="shoal-ssh-") as scratch:
        if password is not None:
            askpass = Path(scratch) / "askpass"
            askpass.write_text(ASKPASS)
            askpass.chmod(0o700)
            env.update(
                SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", SHOAL_SSH_PASSWORD=password
            )
        try:
            return subprocess.call(argv, env=env)
        except KeyboardInterrupt:
            return 130


def _auth_options(identity: Path | None, options: list[str] | None) -> list[str]:
    argv: list[str] = []
    if identity is not None:
        if not identity.is_file():
            raise CliError(f"{identity}: no such key file")
        argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    for option in options or []:
        argv += ["-o", option]
    return argv


def register(app: typer.Typer) -> None:
    @app.command()
    def ssh(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        command: Annotated[
            list[str] | None,
            typer.Argument(
                help="Command to run instead of a shell (after --).", show_default=False
            ),
        ] = None,
        user: UserOpt = None,
        identity: IdentityOpt = None,
        password: PasswordOpt = None,
        ssh_option: SshOptionOpt = None,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """SSH into a VM through a tunnel; exits with the remote command's exit code."""
        login = user or _guest_user(context, namespace, name)
        argv = [
            "ssh",
            *EPHEMERAL_HOST_KEYS,
            "-o", f"ProxyCommand={_proxy_command(context, namespace, name)}",
            *_auth_options(identity, ssh_option),
            "-l", login,
            name,
            # ssh reads options after the host too: "--" keeps the command's own (ls -l) its own.
            *(["--", *command] if command else []),
        ]  # fmt: skip
        raise typer.Exit(_run(argv, password))

    @app.command()
    def scp(
        paths: Annotated[
            list[str],
            typer.Argument(help="SOURCE... TARGET; a VM's path is VM:PATH.", show_default=False),
        ],
        recursive: Annotated[
            bool, typer.Option("--recursive", "-r", help="Copy directories.")
        ] = False,
        preserve: Annotated[
            bool,
            typer.Option("--preserve", "-p", help="Keep modification times and modes (scp -p)."),
        ] = False,
        legacy: Annotated[
            bool,
            typer.Option(
                "--legacy",
                "-O",
                help="Use the legacy SCP protocol instead of SFTP (scp -O). Needed for guests"
                " with no sftp-server, such as dropbear-only or busybox images (the guest needs"
                " an scp program instead).",
            ),
        ] = False,
        user: UserOpt = None,
        identity: IdentityOpt = None,
        password: PasswordOpt = None,
        ssh_option: SshOptionOpt = None,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Copy files to and from VMs with OpenSSH's scp, through tunnels (-O for guests with
        no sftp-server)."""
        if len(paths) < 2:
            raise CliError("give at least one SOURCE and a TARGET")
        vms = [p.split(":", 1)[0] for p in paths if ":" in p and not p.startswith(("/", "."))]
        if not vms:
            raise CliError("no VM:PATH among the paths: nothing to copy through a tunnel")
        login = user or _guest_user(context, namespace, vms[0])
        argv = [
            "scp",
            *EPHEMERAL_HOST_KEYS,
            "-o", f"ProxyCommand={_proxy_command(context, namespace, '%h')}",
            "-o", f"User={login}",
            *_auth_options(identity, ssh_option),
            *(["-r"] if recursive else []),
            *(["-p"] if preserve else []),
            *(["-O"] if legacy else []),
            # As for ssh: "--" keeps a path that starts with "-" a path.
            "--",
            *paths,
        ]  # fmt: skip
        raise typer.Exit(_run(argv, password))
