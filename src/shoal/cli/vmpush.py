"""`shoal vm push VM REF` and `shoal vm commit VM --name N --to REF`: the VM's node pushes its
disk to an OCI registry as a shoal image (a running guest is paused while the disk is read) and
this shows the progress it streams back; commit then makes an Image of what was pushed, pinned
by digest, so VMs on any node can boot it."""

import json
import sys
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from shoal.cli.common import CliError, ContextOpt, NamespaceOpt, Target, connect
from shoal.cli.output import Format, OutputOpt, print_object
from shoal.client import resource_path
from shoal.images import credentials
from shoal.images.errors import ImageError
from shoal.images.reference import parse

ReferenceArg = Annotated[
    str, typer.Argument(help="Where to push: HOST[:PORT]/REPO[:TAG].", show_default=False)
]
UsernameOpt = Annotated[str | None, typer.Option(help="Registry user (with --password-stdin).")]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the registry password from stdin.")
]
InsecureOpt = Annotated[bool, typer.Option(help="Allow plain HTTP or an unverified certificate.")]


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


def push_vm(target: Target, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Have the VM's node push its disk, with a progress bar; the node's result record."""
    result: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
    ) as progress:
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
    return result


def _summary(name: str, result: dict[str, Any]) -> str:
    return (
        f"pushed {name} to {result['reference']}\n"
        f"digest: {result['digest']} ({result.get('uploadedBlobs', 0)} blobs uploaded, "
        f"{result.get('skippedBlobs', 0)} already there)"
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def push(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        reference: ReferenceArg,
        username: UsernameOpt = None,
        password_stdin: PasswordStdinOpt = False,
        insecure: InsecureOpt = False,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Push a VM's disk as a shoal image (a running guest is paused while it is read)."""
        body = {
            "reference": reference,
            "insecure": insecure,
            **_credentials(reference, username, password_stdin),
        }
        with connect(context, namespace) as target:
            result = push_vm(target, name, body)
        typer.echo(_summary(name, result))

    @app.command()
    def commit(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        image: Annotated[
            str, typer.Option("--name", help="Name of the new Image.", show_default=False)
        ],
        to: Annotated[
            str,
            typer.Option(
                "--to",
                help="Registry reference the image is stored at (shoal keeps images in OCI "
                "registries): HOST[:PORT]/REPO[:TAG].",
                show_default=False,
            ),
        ],
        username: UsernameOpt = None,
        password_stdin: PasswordStdinOpt = False,
        insecure: InsecureOpt = False,
        output: OutputOpt = Format.table,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Make a new Image of a VM's disk as it is now (pushed to --to, pinned by digest)."""
        from shoal.cli.image import describe, image_from_registry

        body = {"reference": to, "insecure": insecure, **_credentials(to, username, password_stdin)}
        with connect(context, namespace) as target:
            result = push_vm(target, name, body)
            created, _, _, _ = image_from_registry(
                target, str(result["reference"]), image, insecure
            )
        if output in (Format.json, Format.yaml):
            print_object(created, output, describe)
            return
        typer.echo(_summary(name, result))
        typer.echo(f"image {created['metadata']['name']} created from {result['reference']}")
