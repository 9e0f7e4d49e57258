"""`shoal secret`: credentials for guests (SSH keys, passwords, CI tokens), encrypted at rest.

No option takes a value on the command line: values come from files, environment variables or
standard input, so they never show in `ps` or a shell's history. Nothing prints a value unless
`--reveal` is given.
"""

import base64
import binascii
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from shoal.cli.common import API_VERSION, CliError, ContextOpt, NamespaceOpt, connect, fetch_list
from shoal.cli.output import (
    Format,
    OutputOpt,
    created_age,
    labels_text,
    print_data,
    print_kv,
    print_list,
)
from shoal.cli.parse import parse_pairs
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.columns import TABLES

PLURAL = "secrets"
HIDDEN = "values hidden (null): add --reveal to print them"

app = typer.Typer(
    help="Manage Secrets: credentials for guests, encrypted at rest.", no_args_is_help=True
)
create_app = typer.Typer(
    help="Create a Secret from an SSH key or password (ssh), or from files and environment "
    "variables (generic).",
    no_args_is_help=True,
)
app.add_typer(create_app, name="create")


class GenericType(StrEnum):
    opaque = "opaque"
    basic_auth = "basic-auth"


NameArg = Annotated[str, typer.Argument(help="Name of the Secret.", show_default=False)]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        metavar="KEY=VALUE",
        help="Label for the Secret as key=value (repeatable).",
        show_default=False,
    ),
]


def _keys(obj: Obj) -> list[str]:
    return sorted(obj.get("data") or {})


def _decoded(value: str | None) -> bytes:
    try:
        return base64.b64decode(value or "", validate=True)
    except (binascii.Error, ValueError):
        return b""


def hidden(obj: Obj) -> Obj:
    """obj with every value replaced by null: what may be printed without --reveal."""
    return {**obj, "data": {key: None for key in obj.get("data") or {}}}


TABLE = TABLES["Secret"]
COLUMNS = TABLE.columns


def _size(value: str | None) -> str:
    size = len(_decoded(value))
    return f"{size} byte" if size == 1 else f"{size} bytes"


def _revealed(value: str | None) -> str:
    raw = _decoded(value)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return f"<{len(raw)} bytes of binary data: -o json --reveal gives their base64>"


def describe(obj: Obj, reveal: bool) -> None:
    meta = obj["metadata"]
    print_kv(
        [
            ("Name", meta["name"]),
            ("Namespace", meta.get("namespace", "")),
            ("Type", str(obj.get("type", ""))),
            ("Labels", labels_text(meta.get("labels"))),
            ("Age", created_age(obj)),
        ]
    )
    data = obj.get("data") or {}
    typer.echo("Data:" + ("" if data else "  <none>"))
    width = max((len(key) for key in data), default=0) + 2
    for key in sorted(data):
        if reveal:
            lines = _revealed(data[key]).splitlines() or [""]
            typer.echo(f"  {key + ':':<{width}}{lines[0]}".rstrip())
            for line in lines[1:]:
                typer.echo(f"  {'':<{width}}{line}".rstrip())
        else:
            typer.echo(f"  {key + ':':<{width}}{_size(data[key])}")
    if data and not reveal:
        typer.echo("(values hidden: add --reveal to print them)")


def _print_hidden(data: Any, fmt: Format, has_values: bool) -> None:
    print_data(data, fmt)
    if has_values:
        typer.echo(HIDDEN, err=True)


def _read(path: str, flag: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CliError(f"{flag} {path}: {error.strerror or error}") from None


def _create(
    name: str,
    type_: str,
    values: dict[str, bytes],
    label: list[str] | None,
    output: Format,
    context: str | None,
    namespace: str | None,
) -> None:
    body: Obj = {
        "apiVersion": API_VERSION,
        "kind": "Secret",
        "metadata": {"name": name, "labels": parse_pairs(label, "--label")},
        "type": type_,
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in values.items()},
    }
    with connect(context, namespace) as target:
        created = target.client.create(PLURAL, body, target.namespace)
    if output in (Format.json, Format.yaml):
        _print_hidden(hidden(created), output, bool(created.get("data")))
    else:
        keys = ", ".join(_keys(created)) or "no keys"
        typer.echo(f"secret {created['metadata']['name']} created ({type_}: {keys})")


@create_app.command("ssh")
def create_ssh(
    name: NameArg,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="The guest user to log in as.", show_default=False),
    ] = None,
    private_key: Annotated[
        Path | None,
        typer.Option(
            "--private-key",
            "-i",
            help="Private key file (PEM or OpenSSH format, no passphrase).",
            show_default=False,
        ),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Create an ssh-auth Secret: how the agent logs in to guests.

    A VM names it in spec.access.secretRef. Give --private-key FILE, --password-stdin, or both;
    --user sets the guest user.
    """
    if private_key is None and not password_stdin:
        raise CliError("give --private-key FILE or --password-stdin (or both)")
    values: dict[str, bytes] = {}
    if user is not None:
        values["username"] = user.encode()
    if private_key is not None:
        values["ssh-privatekey"] = _read(str(private_key), "--private-key")
    if password_stdin:
        password = sys.stdin.buffer.read().rstrip(b"\r\n")
        if not password:
            raise CliError("--password-stdin: standard input held no password")
        values["password"] = password
    _create(name, "ssh-auth", values, label, output, context, namespace)


def _key_and_source(item: str, flag: str, default_key: str) -> tuple[str, str]:
    key, sep, source = item.partition("=")
    if not sep:
        return default_key, item
    if not key or not source:
        raise CliError(f"{flag} {item!r}: expected KEY=VALUE-SOURCE")
    return key, source


@create_app.command("generic")
def create_generic(
    name: NameArg,
    from_file: Annotated[
        list[str] | None,
        typer.Option(
            "--from-file",
            help="KEY=PATH: the file's bytes under KEY (PATH alone: the file's name is the key; "
            "'-' reads stdin). Repeatable.",
            show_default=False,
        ),
    ] = None,
    from_env: Annotated[
        list[str] | None,
        typer.Option(
            "--from-env",
            help="KEY=ENVVAR: the environment variable's value under KEY (ENVVAR alone: its "
            "name is the key). Repeatable.",
            show_default=False,
        ),
    ] = None,
    type_: Annotated[
        GenericType,
        typer.Option("--type", help="opaque (any keys) or basic-auth (username and password)."),
    ] = GenericType.opaque,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Create a Secret from files and environment variables.

    Values are never taken from the command line, so they stay out of `ps` and shell history.
    """
    values: dict[str, bytes] = {}

    def add(key: str, value: bytes, flag: str) -> None:
        if key in values:
            raise CliError(f"{flag}: key {key!r} is given twice")
        values[key] = value

    for item in from_file or []:
        key, path = _key_and_source(item, "--from-file", "")
        add(key or Path(path).name, _read(path, "--from-file"), "--from-file")
    for item in from_env or []:
        key, variable = _key_and_source(item, "--from-env", "")
        if variable not in os.environ:
            raise CliError(f"--from-env {item}: environment variable {variable} is not set")
        add(key or variable, os.environ[variable].encode(), "--from-env")
    if not values:
        raise CliError("give at least one --from-file or --from-env")
    _create(name, type_.value, values, label, output, context, namespace)


@app.command("list")
def list_(
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="Label selector, e.g. team=ios.")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List in every namespace.")
    ] = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List Secrets: NAME, TYPE, KEYS, AGE. Values are never printed (-o json gives null)."""
    with connect(context, namespace) as target:
        listing = fetch_list(
            target.client,
            PLURAL,
            None if all_namespaces else target.namespace,
            labelSelector=selector,
        )
    if output in (Format.json, Format.yaml):
        items = listing.get("items") or []
        shown = {**listing, "items": [hidden(item) for item in items]}
        _print_hidden(shown, output, any(item.get("data") for item in items))
        return
    first = TABLE.first(all_namespaces=all_namespaces)
    print_list(listing, output, COLUMNS, first=first)


@app.command()
def get(
    name: NameArg,
    reveal: Annotated[
        bool,
        typer.Option(
            "--reveal",
            help="Print the values: decoded, or with -o json|yaml as the API holds them (base64).",
        ),
    ] = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Show a Secret: its type, keys and the size of each value (the values with --reveal)."""
    with connect(context, namespace) as target:
        obj = target.client.get(PLURAL, name, target.namespace)
    if output in (Format.json, Format.yaml):
        if reveal:
            print_data(obj, output)
        else:
            _print_hidden(hidden(obj), output, bool(obj.get("data")))
        return
    describe(obj, reveal)


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Names of the Secrets.", show_default=False)],
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete Secrets (VMs that refer to them are left as they are)."""
    with connect(context, namespace) as target:
        delete_each(target, PLURAL, "secret", names, target.namespace)
