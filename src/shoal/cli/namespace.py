"""`shoal namespace`: tenants' sandboxes."""

from typing import Annotated

import typer

from shoal.cli.common import API_VERSION, ContextOpt, connect, fetch_list
from shoal.cli.output import (
    Format,
    OutputOpt,
    created_age,
    dig,
    labels_text,
    print_data,
    print_kv,
    print_list,
    print_object,
)
from shoal.cli.parse import parse_pairs
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.columns import TABLES

PLURAL = "namespaces"

app = typer.Typer(help="Manage namespaces.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Name of the namespace.", show_default=False)]

TABLE = TABLES["Namespace"]
COLUMNS = TABLE.columns
WIDE = TABLE.wide


def describe(obj: Obj) -> None:
    print_kv(
        [
            ("Name", obj["metadata"]["name"]),
            ("Status", str(dig(obj, "status.phase", "Active"))),
            ("Labels", labels_text(dig(obj, "metadata.labels"))),
            ("Age", created_age(obj)),
        ]
    )


@app.command()
def create(
    name: NameArg,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            metavar="KEY=VALUE",
            help="Label as key=value (repeatable).",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """Create a namespace."""
    meta: dict[str, object] = {"name": name}
    if label:
        meta["labels"] = parse_pairs(label, "--label")
    body = {"apiVersion": API_VERSION, "kind": "Namespace", "metadata": meta}
    with connect(context) as target:
        created = target.client.create(PLURAL, body)
    if output in (Format.json, Format.yaml):
        print_data(created, output)
    else:
        typer.echo(f"namespace {name} created")


@app.command("list")
def list_(
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="Label selector, e.g. team=ios.")
    ] = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """List namespaces."""
    with connect(context) as target:
        listing = fetch_list(target.client, PLURAL, None, labelSelector=selector)
    print_list(listing, output, COLUMNS, WIDE)


@app.command()
def get(name: NameArg, output: OutputOpt = Format.table, context: ContextOpt = None) -> None:
    """Show one namespace."""
    with connect(context) as target:
        obj = target.client.get(PLURAL, name)
    print_object(obj, output, describe)


@app.command()
def delete(
    names: Annotated[
        list[str], typer.Argument(help="Names of the namespaces.", show_default=False)
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the namespaces and their VMs are gone.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait with --wait.")
    ] = 600.0,
    context: ContextOpt = None,
) -> None:
    """Delete namespaces: each is Terminating until everything in it is gone."""
    with connect(context) as target:
        delete_each(target, PLURAL, "namespace", names, None, wait=wait, timeout=timeout)
