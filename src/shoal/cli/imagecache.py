"""`shoal image cache`: keep an image pulled on nodes ahead of the VMs that will need it
(ImageCache objects), and follow each node's progress."""

import time
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from shoal.cli.common import CliError, ContextOpt, connect, fetch_list
from shoal.cli.output import (
    Format,
    OutputOpt,
    created_age,
    print_kv,
    print_list,
    print_object,
)
from shoal.cli.parse import parse_pairs
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.columns import TABLES, imagecache_ready, imagecache_targets
from shoal.model.meta import API_VERSION

PLURAL = "imagecaches"
POLL = 0.5

app = typer.Typer(help="Keep images pulled on nodes ahead of time.", no_args_is_help=True)


TABLE = TABLES["ImageCache"]
COLUMNS = TABLE.columns


def describe(obj: Obj) -> None:
    pairs = [
        ("Name", obj["metadata"]["name"]),
        ("Image", obj["spec"]["image"]),
        ("Nodes", imagecache_targets(obj)),
        ("Ready", imagecache_ready(obj)),
        ("Age", created_age(obj)),
    ]
    for node, entry in sorted(((obj.get("status") or {}).get("nodes") or {}).items()):
        detail = entry["state"]
        if entry.get("totalBytes"):
            detail += f" {entry.get('bytes', 0) * 100 // entry['totalBytes']}%"
        if entry.get("message"):
            detail += f": {entry['message']}"
        pairs.append((f"  {node}", detail))
    print_kv(pairs)


def _follow(target_client: object, name: str, timeout: float) -> Obj:
    """Poll the ImageCache, one progress bar per node, until every node is Ready (or one
    Failed, or timeout)."""
    from shoal.client import Client

    assert isinstance(target_client, Client)
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[state]}"),
        transient=True,
    ) as progress:
        bars: dict[str, TaskID] = {}
        while True:
            obj = target_client.get(PLURAL, name)
            status = obj.get("status") or {}
            for node, entry in (status.get("nodes") or {}).items():
                if node not in bars:
                    bars[node] = progress.add_task(node, total=None, state="")
                total = entry.get("totalBytes") or None
                done = total if entry["state"] == "Ready" and total else entry.get("bytes", 0)
                progress.update(bars[node], total=total, completed=done, state=entry["state"])
            nodes = status.get("nodes") or {}
            if status.get("failed"):
                failures = [f"{n}: {e.get('message') or 'failed'}" for n, e in nodes.items()
                            if e["state"] == "Failed"]  # fmt: skip
                raise CliError(f"image cache {name} failed on " + "; ".join(failures))
            if nodes and status.get("ready") == status.get("desired"):
                return obj
            if time.monotonic() > deadline:
                raise CliError(
                    f"image cache {name}: {imagecache_ready(obj)} nodes ready after {timeout:.0f}s"
                )
            time.sleep(POLL)


@app.command("add")
def add(
    image: Annotated[str, typer.Argument(help="Image name or OCI reference.", show_default=False)],
    name: Annotated[
        str | None,
        typer.Option(help="Name of the ImageCache; default: the image's name.", show_default=False),
    ] = None,
    nodes: Annotated[
        str | None, typer.Option(help="Comma-separated node names.", show_default=False)
    ] = None,
    selector: Annotated[
        list[str] | None,
        typer.Option(help="Node label key=value (repeatable): nodes having all of them."),
    ] = None,
    all_nodes: Annotated[bool, typer.Option("--all", help="Every node.")] = False,
    wait: Annotated[bool, typer.Option(help="Show progress until every node has it.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 3600.0,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """Pull an image onto nodes now, so VMs that need it later start without a pull."""
    spec: Obj = {"image": image}
    chosen = sum((nodes is not None, bool(selector), all_nodes))
    if chosen != 1:
        raise CliError("give exactly one of --nodes, --selector or --all")
    if nodes is not None:
        spec["nodes"] = [n.strip() for n in nodes.split(",") if n.strip()]
    elif selector:
        spec["nodeSelector"] = parse_pairs(selector, "--selector")
    else:
        spec["allNodes"] = True
    default_name = image.rsplit("/", 1)[-1].replace(":", "-").replace("@", "-").lower()
    body = {
        "apiVersion": API_VERSION,
        "kind": "ImageCache",
        "metadata": {"name": name or default_name[:63].strip("-.")},
        "spec": spec,
    }
    with connect(context) as target:
        created = target.client.create(PLURAL, body)
        if wait:
            created = _follow(target.client, created["metadata"]["name"], timeout)
    if output in (Format.json, Format.yaml):
        print_object(created, output, describe)
    elif wait:
        typer.echo(
            f"image cache {created['metadata']['name']}: {imagecache_ready(created)} nodes ready"
        )
    else:
        typer.echo(f"image cache {created['metadata']['name']} created")


@app.command("list")
def list_(output: OutputOpt = Format.table, context: ContextOpt = None) -> None:
    """List ImageCaches with how many of their nodes are ready."""
    with connect(context) as target:
        listing = fetch_list(target.client, PLURAL, None)
    print_list(listing, output, COLUMNS, [])


@app.command()
def get(
    name: Annotated[str, typer.Argument(help="Name of the ImageCache.", show_default=False)],
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """Show one ImageCache, with each node's state."""
    with connect(context) as target:
        obj = target.client.get(PLURAL, name)
    print_object(obj, output, describe)


@app.command()
def delete(
    names: Annotated[
        list[str], typer.Argument(help="Names of the ImageCaches.", show_default=False)
    ],
    context: ContextOpt = None,
) -> None:
    """Delete ImageCaches (images already pulled stay until the node's cache evicts them)."""
    with connect(context) as target:
        delete_each(target, PLURAL, "image cache", names, None)
