"""`shoal image`: VM images. `import` registers local files (a disk, and a kernel and initrd for
direct kernel boot) as an Image; its files must be at the same path on every node that runs it."""

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from shoal.cli.common import CliError, ContextOpt, connect, fetch_list
from shoal.cli.output import (
    Column,
    Format,
    OutputOpt,
    created_age,
    field,
    human_size,
    print_kv,
    print_list,
    print_object,
)
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.images.local import file_entry, image_object

PLURAL = "images"

app = typer.Typer(help="Manage VM images.", no_args_is_help=True)


def _source(obj: Obj) -> str:
    source = (obj.get("spec") or {}).get("source") or {}
    if source.get("oci"):
        return str(source["oci"])
    local = source.get("local") or {}
    return str((local.get("disk") or {}).get("path", "<none>"))


def _size(obj: Obj) -> str:
    local = ((obj.get("spec") or {}).get("source") or {}).get("local") or {}
    size = sum(int(entry.get("size") or 0) for entry in local.values() if entry)
    return human_size(size) if size else "<unknown>"


COLUMNS: list[Column] = [
    ("NAME", field("metadata.name")),
    ("OS", field("spec.os")),
    ("ARCH", field("spec.arch")),
    ("BOOT", field("spec.boot")),
    ("SIZE", _size),
    ("AGE", created_age),
]
WIDE: list[Column] = [("SOURCE", _source), ("SSH USER", field("spec.sshUser"))]


def describe(obj: Obj) -> None:
    spec = obj.get("spec") or {}
    local = (spec.get("source") or {}).get("local") or {}
    pairs = [
        ("Name", obj["metadata"]["name"]),
        ("Source", _source(obj)),
        ("OS", str(spec.get("os"))),
        ("Arch", str(spec.get("arch"))),
        ("Boot", f"{spec.get('boot')} ({spec.get('firmware')})"),
        ("SSH user", str(spec.get("sshUser"))),
        ("Size", _size(obj)),
        ("Age", created_age(obj)),
    ]
    for role in ("disk", "kernel", "initrd"):
        if local.get(role):
            pairs.append((role.capitalize(), f"{local[role]['path']} {local[role]['digest']}"))
    if spec.get("cmdline"):
        pairs.append(("Cmdline", spec["cmdline"]))
    print_kv(pairs)


def _file_entry(path: Path, what: str, progress: Progress) -> Obj:
    task = progress.add_task(
        f"{what} {path.name}", total=path.stat().st_size if path.is_file() else 0
    )
    try:
        return file_entry(path, lambda n: progress.advance(task, n))
    except FileNotFoundError:
        raise CliError(f"{what} {path}: no such file") from None
    except OSError as error:
        raise CliError(f"{what} {path}: {error.strerror or error}") from None


@app.command("import")
def import_(
    file: Annotated[
        Path, typer.Argument(help="The disk image (qcow2 or raw).", show_default=False)
    ],
    name: Annotated[str, typer.Option("--name", help="Name of the new Image.", show_default=False)],
    os: Annotated[str, typer.Option("--os", help="Guest OS: linux or macos.")] = "linux",
    arch: Annotated[str, typer.Option(help="Guest architecture: amd64 or arm64.")] = "amd64",
    boot: Annotated[
        str, typer.Option(help="disk (firmware boots the disk) or kernel (direct kernel boot).")
    ] = "disk",
    firmware: Annotated[str, typer.Option(help="For disk boot: bios or uefi.")] = "bios",
    kernel: Annotated[
        Path | None, typer.Option(help="Kernel, for --boot kernel.", show_default=False)
    ] = None,
    initrd: Annotated[
        Path | None, typer.Option(help="Initial ramdisk, for --boot kernel.", show_default=False)
    ] = None,
    cmdline: Annotated[str, typer.Option(help="Kernel command line, for --boot kernel.")] = "",
    ssh_user: Annotated[str, typer.Option(help="The user `shoal ssh` logs in as.")] = "root",
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """Register local image files as an Image (their digests are taken now)."""
    if boot not in ("disk", "kernel"):
        raise CliError(f"--boot must be disk or kernel, not {boot!r}")
    if boot == "kernel" and kernel is None:
        raise CliError("--boot kernel needs --kernel")
    if boot == "disk" and (kernel or initrd):
        raise CliError("--kernel and --initrd go with --boot kernel")
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
    ) as progress:
        local: Obj = {"disk": _file_entry(file, "disk", progress)}
        if kernel is not None:
            local["kernel"] = _file_entry(kernel, "kernel", progress)
        if initrd is not None:
            local["initrd"] = _file_entry(initrd, "initrd", progress)
    body = image_object(
        name,
        local,
        os=os,
        arch=arch,
        boot=boot,
        firmware=firmware,
        cmdline=cmdline,
        ssh_user=ssh_user,
    )
    with connect(context) as target:
        created = target.client.create(PLURAL, body)
    if output in (Format.json, Format.yaml):
        print_object(created, output, describe)
    else:
        typer.echo(f"image {created['metadata']['name']} imported")


@app.command("list")
def list_(output: OutputOpt = Format.table, context: ContextOpt = None) -> None:
    """List Images."""
    with connect(context) as target:
        listing = fetch_list(target.client, PLURAL, None)
    print_list(listing, output, COLUMNS, WIDE)


@app.command()
def get(
    name: Annotated[str, typer.Argument(help="Name of the Image.", show_default=False)],
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """Show one Image."""
    with connect(context) as target:
        obj = target.client.get(PLURAL, name)
    print_object(obj, output, describe)


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Names of the Images.", show_default=False)],
    context: ContextOpt = None,
) -> None:
    """Delete Images (VMs already made from them keep running)."""
    with connect(context) as target:
        delete_each(target, PLURAL, "image", names, None)
