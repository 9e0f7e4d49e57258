"""`shoal vmconfig`: named VirtualMachine spec templates (Orka's vm-config)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from shoal.cli import vmspec
from shoal.cli.common import (
    API_VERSION,
    CliError,
    ContextOpt,
    NamespaceOpt,
    connect,
    fetch_list,
    load_object_file,
)
from shoal.cli.output import (
    Format,
    OutputOpt,
    created_age,
    labels_text,
    print_kv,
    print_list,
    print_object,
)
from shoal.cli.parse import parse_pairs
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.columns import TABLES

PLURAL = "vmconfigs"

app = typer.Typer(help="Manage VMConfigs (named VM templates).", no_args_is_help=True)


TABLE = TABLES["VMConfig"]
COLUMNS = TABLE.columns
WIDE = TABLE.wide


def describe(obj: Obj) -> None:
    spec = obj.get("spec") or {}
    pairs = [
        ("Name", obj["metadata"]["name"]),
        ("Namespace", obj["metadata"].get("namespace", "")),
        ("Labels", labels_text(obj["metadata"].get("labels"))),
        ("Age", created_age(obj)),
    ]
    pairs += [(key, _text(value)) for key, value in spec.items() if key != "startupScript"]
    if spec.get("startupScript"):
        pairs.append(("startupScript", spec["startupScript"]))
    print_kv(pairs)


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return labels_text(value)
    if isinstance(value, list):
        if not value:
            return "<none>"
        return ",".join(str(v.get("guest", v)) if isinstance(v, dict) else str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@app.command()
def create(
    name: Annotated[
        str | None,
        typer.Argument(help="Name of the VMConfig (may come from the file).", show_default=False),
    ] = None,
    filename: Annotated[
        Path | None,
        typer.Option(
            "--filename",
            "-f",
            help="YAML/JSON file with the VMConfig (or just its spec); '-' reads stdin.",
            show_default=False,
        ),
    ] = None,
    image: vmspec.ImageOpt = None,
    cpu: vmspec.CpuOpt = None,
    memory: vmspec.MemoryOpt = None,
    disk: vmspec.DiskOpt = None,
    os: vmspec.OsOpt = None,
    arch: vmspec.ArchOpt = None,
    selector: vmspec.SelectorOpt = None,
    port: vmspec.PortOpt = None,
    ephemeral: vmspec.EphemeralOpt = None,
    ttl: vmspec.TtlOpt = None,
    priority: vmspec.PriorityOpt = None,
    label: vmspec.LabelOpt = None,
    startup_script: vmspec.StartupScriptOpt = None,
    access_secret: vmspec.AccessSecretOpt = None,
    access_user: vmspec.AccessUserOpt = None,
    env: vmspec.EnvOpt = None,
    env_secret: vmspec.EnvSecretOpt = None,
    delete_when_script_exits: vmspec.DeleteWhenScriptExitsOpt = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Create a VMConfig from flags or from a file (flags override the file's spec)."""
    body: Obj = (
        load_object_file(filename, "VMConfig")
        if filename
        else {"apiVersion": API_VERSION, "kind": "VMConfig"}
    )
    meta: Obj = body.setdefault("metadata", {})
    if name:
        meta["name"] = name
    if not meta.get("name"):
        raise CliError("give the VMConfig a NAME (or metadata.name in the file)")
    if label:
        meta.setdefault("labels", {}).update(parse_pairs(label, "--label"))
    flags = vmspec.SpecFlags(
        image=image,
        cpu=cpu,
        memory=memory,
        disk=disk,
        os=os,
        arch=arch,
        selector=selector or [],
        ports=port or [],
        ephemeral=ephemeral,
        ttl=ttl,
        priority=priority,
        startup_script=startup_script,
        access_secret=access_secret,
        access_user=access_user,
        env=env or [],
        env_secrets=env_secret or [],
        delete_when_script_exits=delete_when_script_exits,
    )
    spec = {**(body.get("spec") or {}), **vmspec.build_spec(flags)}
    if not spec.get("image"):
        raise CliError("--image is required (or spec.image in the file)")
    body["spec"] = spec
    with connect(context, namespace) as target:
        created = target.client.create(PLURAL, body, target.namespace)
    if output in (Format.json, Format.yaml):
        print_object(created, output, describe)
    else:
        typer.echo(f"vmconfig {created['metadata']['name']} created")


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
    """List VMConfigs."""
    with connect(context, namespace) as target:
        listing = fetch_list(
            target.client,
            PLURAL,
            None if all_namespaces else target.namespace,
            labelSelector=selector,
        )
    first = TABLE.first(all_namespaces=all_namespaces)
    print_list(listing, output, COLUMNS, WIDE, first=first)


@app.command()
def get(
    name: Annotated[str, typer.Argument(help="Name of the VMConfig.", show_default=False)],
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Show one VMConfig."""
    with connect(context, namespace) as target:
        obj = target.client.get(PLURAL, name, target.namespace)
    print_object(obj, output, describe)


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Names of the VMConfigs.", show_default=False)],
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete VMConfigs (VMs made from them are not affected)."""
    with connect(context, namespace) as target:
        delete_each(target, PLURAL, "vmconfig", names, target.namespace)
