"""`shoal image`: VM images. `import` registers local files (a disk, and a kernel and initrd for
direct kernel boot) as an Image; its files must be at the same path on every node that runs it.
`push` uploads an imported Image's files to an OCI registry; `pull` makes an Image of an image in
a registry (nodes pull its bytes when a VM needs them)."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from shoal.cli import imagecache
from shoal.cli.common import API_VERSION, CliError, ContextOpt, Target, connect, fetch_list
from shoal.cli.output import (
    Format,
    OutputOpt,
    created_age,
    human_size,
    print_data,
    print_kv,
    print_list,
    print_object,
)
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.columns import TABLES, image_size, image_source
from shoal.images import credentials
from shoal.images.chunks import DEFAULT_CHUNK_SIZE, check_chunk_size
from shoal.images.containerdisk import LAYER_TYPES
from shoal.images.errors import ImageError, NotAShoalImage
from shoal.images.layout import Metadata, is_shoal
from shoal.images.local import file_entry, image_object
from shoal.images.pull import shoal_config
from shoal.images.push import DEFAULT_PARALLEL, push_image
from shoal.images.reference import DEFAULT_TAG, Reference, parse
from shoal.images.registry import RegistryClient, client_for
from shoal.quantity import parse_bytes

PLURAL = "images"

app = typer.Typer(help="Manage VM images.", no_args_is_help=True)
app.add_typer(imagecache.app, name="cache")


TABLE = TABLES["Image"]
COLUMNS = TABLE.columns
WIDE = TABLE.wide


def describe(obj: Obj) -> None:
    spec = obj.get("spec") or {}
    local = (spec.get("source") or {}).get("local") or {}
    pairs = [
        ("Name", obj["metadata"]["name"]),
        ("Source", image_source(obj)),
        ("OS", str(spec.get("os"))),
        ("Arch", str(spec.get("arch"))),
        ("Boot", f"{spec.get('boot')} ({spec.get('firmware')})"),
        ("SSH user", str(spec.get("sshUser"))),
        ("Size", image_size(obj)),
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


# -- registries ----------------------------------------------------------------------------

InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Accept any TLS certificate, and plain HTTP from a registry that does not speak "
        "TLS (loopback registries are plain HTTP anyway).",
    ),
]
_NOT_NAME = re.compile(r"[^a-z0-9]+")


def default_name(ref: Reference) -> str:
    """An Image name for a reference: the repository's last part, with the tag unless it is
    `latest` (`reg:5000/team/ubuntu:24.04` -> `ubuntu-24-04`)."""
    text = ref.repository.rsplit("/", 1)[-1]
    if ref.tag and ref.tag != DEFAULT_TAG:
        text += f"-{ref.tag}"
    name = _NOT_NAME.sub("-", text.lower()).strip("-")[:63].strip("-")
    return name or "image"


def _reference(text: str) -> Reference:
    try:
        ref = parse(text)
        ref.require_host()
    except ImageError as error:
        raise CliError(str(error)) from None
    return ref


@contextmanager
def _registry(ref: Reference, insecure: bool) -> Iterator[RegistryClient]:
    """A client for ref's registry with the saved login; image errors become one-line errors."""
    host = ref.require_host()
    try:
        login = credentials.lookup(host)
    except ValueError as error:
        raise CliError(str(error)) from None
    try:
        with client_for(ref, credentials=login, insecure=insecure) as client:
            yield client
    except ImageError as error:
        raise CliError(str(error)) from None
    except OSError as error:
        raise CliError(f"{error.filename or ref}: {error.strerror or error}") from None


def _local_files(name: str, spec: Obj) -> dict[str, Path]:
    """The Image's files, which must be on this machine to be pushed from it."""
    source = spec.get("source") or {}
    local = source.get("local")
    if not local:
        raise CliError(
            f"image {name} comes from {source.get('oci') or 'nowhere'}, not from local files: "
            "only an imported Image can be pushed"
        )
    files: dict[str, Path] = {}
    for role in ("disk", "kernel", "initrd"):
        entry = local.get(role)
        if not entry:
            continue
        path = Path(entry["path"])
        if not path.is_file():
            raise CliError(
                f"image {name}: its {role} {path} is not on this machine; run `shoal image push` "
                "where the image's files are (where it was imported)"
            )
        files[role] = path
    return files


def _metadata(name: str, spec: Obj) -> Metadata:
    try:
        return Metadata.model_validate(
            {key: spec[key] for key in Metadata.model_fields if spec.get(key) is not None}
        )
    except ValidationError as error:
        raise CliError(f"image {name}: {error.errors()[0]['msg']}") from None


def _chunk_size(text: str) -> int:
    try:
        return check_chunk_size(parse_bytes(text))
    except ValueError as error:
        raise CliError(f"--chunk-size {text}: {error}") from None


def _transfer_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
    )


@app.command()
def push(
    image: Annotated[str, typer.Argument(help="Name of an imported Image.", show_default=False)],
    reference: Annotated[
        str,
        typer.Argument(help="Where to push it: HOST[:PORT]/REPOSITORY[:TAG].", show_default=False),
    ],
    parallel: Annotated[
        int, typer.Option(min=1, max=64, help="Chunks compressed and uploaded at once.")
    ] = DEFAULT_PARALLEL,
    chunk_size: Annotated[
        str, typer.Option(help="Size of the disk's chunks: a multiple of 64Ki, at most 1Gi.")
    ] = f"{DEFAULT_CHUNK_SIZE // 2**20}Mi",
    insecure: InsecureOpt = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """Push an imported Image's files to an OCI registry (run it where the files are).

    Only chunks the registry does not have yet are uploaded."""
    ref = _reference(reference)
    size = _chunk_size(chunk_size)
    with connect(context) as target:
        obj = target.client.get(PLURAL, image)
    spec = obj.get("spec") or {}
    files = _local_files(image, spec)
    metadata = _metadata(image, spec)
    with _registry(ref, insecure) as client, _transfer_bar() as progress:
        task = progress.add_task(f"pushing {image}", total=None)
        result = push_image(
            client,
            ref,
            files["disk"],
            metadata,
            kernel=files.get("kernel"),
            initrd=files.get("initrd"),
            chunk_size=size,
            parallel=parallel,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    summary: dict[str, Any] = {
        "image": image,
        "reference": str(ref),
        "digest": result.digest,
        "chunks": result.chunks,
        "zeroChunks": result.zero_chunks,
        "uploadedBlobs": result.uploaded_blobs,
        "uploadedBytes": result.uploaded_bytes,
        "skippedBlobs": result.skipped_blobs,
    }
    if output in (Format.json, Format.yaml):
        print_data(summary, output)
        return
    typer.echo(
        f"pushed image {image} to {ref}: {result.uploaded_blobs} blobs uploaded "
        f"({human_size(result.uploaded_bytes)}), {result.skipped_blobs} already there"
    )
    typer.echo(f"digest: {result.digest}")


def _inspect(client: RegistryClient, ref: Reference) -> tuple[str, str, Metadata, int]:
    """(kind, manifest digest, metadata, bytes a node downloads) of the image at ref."""
    raw, manifest = client.image_manifest(ref, "amd64")
    if is_shoal(manifest):
        _, config, layers = shoal_config(client, ref, manifest)
        return "shoal image", raw.digest, config.metadata, layers.blob_bytes
    if manifest.layers and all(layer.media_type in LAYER_TYPES for layer in manifest.layers):
        size = sum(layer.size for layer in manifest.layers)
        return "containerDisk", raw.digest, Metadata(), size
    raise NotAShoalImage(
        f"{ref} is neither a shoal image nor a containerDisk: its config is "
        f"{manifest.config.media_type!r} and its layers are not container layers"
    )


@app.command()
def pull(
    reference: Annotated[
        str,
        typer.Argument(help="The image: HOST[:PORT]/REPOSITORY[:TAG|@DIGEST].", show_default=False),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Name of the new Image (default: the repository's last part and the tag).",
            show_default=False,
        ),
    ] = None,
    insecure: InsecureOpt = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """Make an Image of an image in a registry (a shoal image or a KubeVirt containerDisk).

    Reads its manifest and config now; each node pulls the disk when a VM needs it."""
    with connect(context) as target:
        created, kind, digest, size = image_from_registry(target, reference, name, insecure)
    if output in (Format.json, Format.yaml):
        print_object(created, output, describe)
        return
    typer.echo(
        f"image {created['metadata']['name']} created from {reference} ({kind}, {digest}, "
        f"{human_size(size)} to pull on each node that runs it)"
    )


def image_from_registry(
    target: Target, reference: str, name: str | None, insecure: bool
) -> tuple[Obj, str, str, int]:
    """Create the Image of the image at reference: (the Image, kind, manifest digest, bytes a
    node downloads)."""
    ref = _reference(reference)
    with _registry(ref, insecure) as client:
        kind, digest, metadata, size = _inspect(client, ref)
    body = {
        "apiVersion": API_VERSION,
        "kind": "Image",
        "metadata": {"name": name or default_name(ref)},
        "spec": {"source": {"oci": reference}, **metadata.model_dump(exclude_none=True)},
    }
    return target.client.create(PLURAL, body), kind, digest, size
