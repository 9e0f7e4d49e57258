"""`shoal vm push VM REF`: the VM's node pushes its disk to an OCI registry as a shoal image,
and this shows the progress it streams back."""

import json
import sys
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from shoal.cli.common import CliError, ContextOpt, NamespaceOpt, connect
from shoal.client import resource_path
from shoal.images import credentials
from shoal.images.errors import ImageError
from shoal.images.reference import parse


def _credentials(reference: str, username: str | None, password_stdin: bool) -> dict[str, str]:
    """What the node should log in with: the flags, else this machine's login for the host
    (shoal registry login, or docker's config), else nothing (the node's own logins)."""
    try:
        host = parse(reference).require_host()
    except ImageError as error:
        raise CliError(str(error)) from None
    if username is not None:
        if not password_stdin:
            raise CliError("--username needs --password-stdin")
        return {"username": username, "password": sys.stdin.readline().rstrip("\n")}
    if password_stdin:
        raise CliError("--password-stdin needs --username")
    found = credentials.lookup(host)
    return {"username": found[0], "password": found[1]} if found else {}


def register(app: typer.Typer) -> None:
    @app.command()
    def push(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        reference: Annotated[
            str,
            typer.Argument(help="Where to push: HOST[:PORT]/REPO[:TAG].", show_default=False),
        ],
        username: Annotated[
            str | None, typer.Option(help="Registry user (with --password-stdin).")
        ] = None,
        password_stdin: Annotated[
            bool, typer.Option("--password-stdin", help="Read the registry password from stdin.")
        ] = False,
        insecure: Annotated[
            bool, typer.Option(help="Allow plain HTTP or an unverified certificate.")
        ] = False,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Push a VM's disk as a shoal image (a running guest is paused while it is read)."""
        body = {
            "reference": reference,
            "insecure": insecure,
            **_credentials(reference, username, password_stdin),
        }
        result: dict[str, object] = {}
        with (
            connect(context, namespace) as target,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("reading the disk", total=None)
            path = resource_path("virtualmachines", target.namespace, name, "push")
            pending = b""
            for chunk in target.client.stream_bytes(path, method="POST", body=body):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    record = json.loads(line)
                    if "error" in record:
                        raise CliError(f"push of {name} failed: {record['error']}")
                    if "digest" in record:
                        result = record
                        continue
                    progress.update(
                        task,
                        description=str(record.get("phase", "")),
                        total=record.get("total") or None,
                        completed=record.get("done") or 0,
                    )
        if not result:
            raise CliError(f"push of {name} ended without a result (the node went away?)")
        typer.echo(f"pushed {name} to {result['reference']}")
        typer.echo(
            f"digest: {result['digest']} ({result.get('uploadedBlobs', 0)} blobs uploaded, "
            f"{result.get('skippedBlobs', 0)} already there)"
        )
