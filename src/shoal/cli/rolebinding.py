"""`shoal rolebinding`: grant a role (admin, edit, view, connect) in a namespace."""

from enum import StrEnum
from typing import Annotated

import typer

from shoal.cli.common import API_VERSION, CliError, ContextOpt, NamespaceOpt, connect, fetch_list
from shoal.cli.output import (
    Format,
    OutputOpt,
    created_age,
    dig,
    print_data,
    print_kv,
    print_list,
    print_object,
    print_table,
)
from shoal.cli.parse import parse_subject
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.columns import TABLES

PLURAL = "rolebindings"

app = typer.Typer(help="Grant roles in a namespace.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Name of the role binding.", show_default=False)]


class Role(StrEnum):
    admin = "admin"
    edit = "edit"
    view = "view"
    connect = "connect"


TABLE = TABLES["RoleBinding"]
COLUMNS = TABLE.columns


def describe(obj: Obj) -> None:
    print_kv(
        [
            ("Name", obj["metadata"]["name"]),
            ("Namespace", str(dig(obj, "metadata.namespace", ""))),
            ("Role", str(dig(obj, "roleRef.name", ""))),
            ("Age", created_age(obj)),
        ]
    )
    typer.echo("Subjects:")
    rows = [
        [str(s.get("kind", "")), str(s.get("name", "")), str(s.get("namespace") or "")]
        for s in obj.get("subjects") or []
    ]
    print_table(["KIND", "NAME", "NAMESPACE"], rows)


def build_subjects(
    serviceaccounts: list[str], users: list[str], namespace: str
) -> list[dict[str, str]]:
    subjects = [parse_subject(sa, namespace) for sa in serviceaccounts]
    subjects += [{"kind": "User", "name": user} for user in users]
    if not subjects:
        raise CliError("name at least one subject: --serviceaccount NS:NAME or --user NAME")
    return subjects


@app.command()
def create(
    name: NameArg,
    role: Annotated[Role, typer.Option("--role", help="Role to grant.", show_default=False)],
    serviceaccount: Annotated[
        list[str] | None,
        typer.Option(
            "--serviceaccount",
            metavar="[NAMESPACE:]NAME",
            help="Service account as NAMESPACE:NAME or NAME (this namespace); repeatable.",
            show_default=False,
        ),
    ] = None,
    user: Annotated[
        list[str] | None,
        typer.Option("--user", metavar="NAME", help="User name; repeatable.", show_default=False),
    ] = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Bind a role to service accounts and users in the namespace."""
    with connect(context, namespace) as target:
        body = {
            "apiVersion": API_VERSION,
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"name": role.value},
            "subjects": build_subjects(serviceaccount or [], user or [], target.namespace),
        }
        created = target.client.create(PLURAL, body, target.namespace)
    if output in (Format.json, Format.yaml):
        print_data(created, output)
    else:
        typer.echo(f"rolebinding {name} created")


@app.command("list")
def list_(
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List in every namespace.")
    ] = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List role bindings."""
    with connect(context, namespace) as target:
        listing = fetch_list(target.client, PLURAL, None if all_namespaces else target.namespace)
    first = TABLE.first(all_namespaces=all_namespaces)
    print_list(listing, output, COLUMNS, first=first)


@app.command()
def get(
    name: NameArg,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Show one role binding."""
    with connect(context, namespace) as target:
        obj = target.client.get(PLURAL, name, target.namespace)
    print_object(obj, output, describe)


@app.command()
def delete(
    names: Annotated[
        list[str], typer.Argument(help="Names of the role bindings.", show_default=False)
    ],
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete role bindings."""
    with connect(context, namespace) as target:
        delete_each(target, PLURAL, "rolebinding", names, target.namespace)
