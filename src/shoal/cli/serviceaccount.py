"""`shoal serviceaccount`: identities for CI systems and tools; their tokens are listed here."""

from typing import Annotated

import typer

from shoal.cli.common import API_VERSION, ContextOpt, NamespaceOpt, connect, fetch_list
from shoal.cli.output import (
    Format,
    OutputOpt,
    age,
    created_age,
    dig,
    labels_text,
    print_data,
    print_kv,
    print_list,
    print_object,
    print_section,
    until,
)
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.columns import TABLES

PLURAL = "serviceaccounts"

app = typer.Typer(help="Manage service accounts.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Name of the service account.", show_default=False)]

TABLE = TABLES["ServiceAccount"]
COLUMNS = TABLE.columns
WIDE = TABLE.wide


def token_rows(obj: Obj) -> list[list[str]]:
    return [
        [str(t.get("id", "")), age(t.get("createdAt")), until(t.get("expiresAt"))]
        for t in dig(obj, "status.tokens", [])
    ]


def describe(obj: Obj) -> None:
    print_kv(
        [
            ("Name", obj["metadata"]["name"]),
            ("Namespace", str(dig(obj, "metadata.namespace", ""))),
            ("Description", str(dig(obj, "spec.description", ""))),
            ("Labels", labels_text(dig(obj, "metadata.labels"))),
            ("Age", created_age(obj)),
        ]
    )
    print_section("Tokens", ["ID", "CREATED", "EXPIRES"], token_rows(obj))


@app.command()
def create(
    name: NameArg,
    description: Annotated[
        str | None, typer.Option("--description", help="What the account is for.")
    ] = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Create a service account (then `shoal token create` and `shoal rolebinding create`)."""
    body: Obj = {"apiVersion": API_VERSION, "kind": "ServiceAccount", "metadata": {"name": name}}
    if description:
        body["spec"] = {"description": description}
    with connect(context, namespace) as target:
        created = target.client.create(PLURAL, body, target.namespace)
    if output in (Format.json, Format.yaml):
        print_data(created, output)
    else:
        typer.echo(f"serviceaccount {name} created")


@app.command("list")
def list_(
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List in every namespace.")
    ] = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List service accounts."""
    with connect(context, namespace) as target:
        listing = fetch_list(target.client, PLURAL, None if all_namespaces else target.namespace)
    first = TABLE.first(all_namespaces=all_namespaces)
    print_list(listing, output, COLUMNS, WIDE, first=first)


@app.command()
def get(
    name: NameArg,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Show a service account and its tokens (id, created, expires)."""
    with connect(context, namespace) as target:
        obj = target.client.get(PLURAL, name, target.namespace)
    print_object(obj, output, describe)


@app.command()
def delete(
    names: Annotated[
        list[str], typer.Argument(help="Names of the service accounts.", show_default=False)
    ],
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete service accounts."""
    with connect(context, namespace) as target:
        delete_each(target, PLURAL, "serviceaccount", names, target.namespace)
