"""`shoal node`: hosts, their capacity and use; cordon, drain, labels, join tokens."""

from typing import Annotated

import typer

from shoal.cli import jointoken
from shoal.cli.common import ContextOpt, Target, connect, fetch_list
from shoal.cli.output import (
    Format,
    OutputOpt,
    age,
    conditions_rows,
    created_age,
    dig,
    field,
    labels_text,
    print_data,
    print_kv,
    print_list,
    print_object,
    print_section,
)
from shoal.cli.parse import parse_label_edits
from shoal.cli.wait import Objects, all_gone, follow
from shoal.client import Obj
from shoal.columns import Usage, bytes_text, node_columns, node_status, usage_by_node
from shoal.errors import Forbidden

PLURAL = "nodes"

app = typer.Typer(help="Inspect and manage nodes (hosts).", no_args_is_help=True)
app.add_typer(jointoken.app, name="join-token", help="Tokens that let new hosts join.")

NameArg = Annotated[str, typer.Argument(help="Name of the node.", show_default=False)]


def node_row(node: Obj, used: Usage | None, wide: bool) -> list[str]:
    """One node's cells, with what its VMs use (None: not known)."""
    usage = None if used is None else {str(dig(node, "metadata.name", "")): used}
    table = node_columns(usage)
    return [get(node) for _, get in table.chosen(wide=wide)]


def _vms(target: Target, node: str | None = None) -> list[Obj] | None:
    """The VMs bound to node (or to any node); None when this caller may not list them all."""
    selector = f"spec.nodeName={node}" if node else None
    try:
        return list(
            fetch_list(target.client, "virtualmachines", None, fieldSelector=selector)["items"]
        )
    except Forbidden:
        return None


@app.command("list")
def list_(
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="Label selector, e.g. xcode=16.")
    ] = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """List nodes with their status and what their VMs use of their allocatable resources."""
    with connect(context) as target:
        listing = fetch_list(target.client, PLURAL, None, labelSelector=selector)
        if output in (Format.json, Format.yaml):
            print_data(listing, output)
            return
        vms = _vms(target) if listing["items"] else []
    if not listing["items"]:
        typer.echo("No nodes found.", err=True)
        return
    usage = usage_by_node(vms) if vms is not None else None
    table = node_columns(usage)
    print_list(listing, output, table.columns, table.wide)


@app.command()
def get(name: NameArg, output: OutputOpt = Format.table, context: ContextOpt = None) -> None:
    """Show one node: status, capacity, allocatable, what is used, its VMs and conditions."""
    with connect(context) as target:
        node = target.client.get(PLURAL, name)
        vms = None if output in (Format.json, Format.yaml) else _vms(target, name)

    def view(obj: Obj) -> None:
        used = usage_by_node(vms or []).get(name, Usage()) if vms is not None else None
        status = obj.get("status") or {}
        capacity, alloc = status.get("capacity") or {}, status.get("allocatable") or {}
        print_kv(
            [
                ("Name", name),
                ("Status", node_status(obj)),
                ("Labels", labels_text(dig(obj, "metadata.labels"))),
                ("Backend", str(status.get("backend") or "<unknown>")),
                ("Accelerator", _accelerator(status)),
                ("Arch/OS", f"{status.get('arch') or '?'}/{status.get('os') or '?'}"),
                ("Guest OS", ",".join(status.get("guestOS") or [])),
                ("Agent version", str(status.get("agentVersion") or "")),
                ("Addresses", ",".join(status.get("addresses") or []) or "<none>"),
                ("Capacity", _resources(capacity)),
                ("Allocatable", _resources(alloc)),
                (
                    "Used",
                    f"cpu={used.cpu} memory={bytes_text(used.memory)} vms={used.vms}"
                    if used
                    else "<unknown>",
                ),
                ("Dedicated to", ",".join(dig(obj, "spec.dedicatedNamespaces", [])) or "<any>"),
                ("Last heartbeat", age(status.get("lastHeartbeatTime"))),
                ("Cached images", ",".join(status.get("cachedImages") or []) or "<none>"),
                ("Age", created_age(obj)),
            ]
        )
        print_section(
            "Conditions", ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], conditions_rows(obj)
        )
        if vms is not None:
            print_section(
                "VMs",
                ["NAMESPACE", "NAME", "PHASE", "CPU", "MEMORY"],
                [
                    [
                        field("metadata.namespace")(vm),
                        field("metadata.name")(vm),
                        field("status.phase", "Pending")(vm),
                        field("spec.cpu")(vm),
                        field("spec.memory")(vm),
                    ]
                    for vm in vms
                ],
            )

    print_object(node, output, view)


def _accelerator(status: Obj) -> str:
    """The accelerator, and why it was chosen (or why there is none)."""
    name, why = status.get("accelerator") or "", status.get("acceleratorReason") or ""
    if name and why:
        return f"{name} ({why})"
    return name or why or "<none>"


def _resources(values: dict[str, object]) -> str:
    return " ".join(f"{k}={values[k]}" for k in ("cpu", "memory", "disk", "vms") if k in values)


def set_unschedulable(target: Target, name: str, value: bool) -> None:
    target.client.patch(PLURAL, name, {"spec": {"unschedulable": value}})


@app.command()
def cordon(name: NameArg, context: ContextOpt = None) -> None:
    """Mark a node unschedulable: running VMs stay, new ones go elsewhere."""
    with connect(context) as target:
        set_unschedulable(target, name, True)
    typer.echo(f"node {name} cordoned")


@app.command()
def uncordon(name: NameArg, context: ContextOpt = None) -> None:
    """Mark a node schedulable again."""
    with connect(context) as target:
        set_unschedulable(target, name, False)
    typer.echo(f"node {name} uncordoned")


def _left(objects: Objects) -> str:
    names = sorted(f"{ns}/{name}" for ns, name in objects)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)} VM{'s' if len(names) != 1 else ''} left: {shown}"


@app.command()
def drain(
    name: NameArg,
    force: Annotated[
        bool,
        typer.Option("--force", help="Delete the node's VMs instead of waiting for them to end."),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the node to empty.")
    ] = 600.0,
    context: ContextOpt = None,
) -> None:
    """Cordon a node, then wait until no VMs are bound to it (with --force: delete them)."""
    selector = f"spec.nodeName={name}"
    with connect(context) as target:
        set_unschedulable(target, name, True)
        typer.echo(f"node {name} cordoned")
        listing = fetch_list(target.client, "virtualmachines", None, fieldSelector=selector)
        items: list[Obj] = listing["items"]
        if force:
            for vm in items:
                meta = vm["metadata"]
                if not meta.get("deletionTimestamp"):
                    target.client.delete("virtualmachines", meta["name"], meta["namespace"])
                    typer.echo(f"deleting VM {meta['namespace']}/{meta['name']}")
        follow(
            target.client,
            "virtualmachines",
            None,
            field_selector=selector,
            judge=all_gone(_left, done="no VMs left"),
            timeout=timeout,
            title=f"draining node {name}",
            initial=(items, str(listing["metadata"].get("resourceVersion") or "")),
        )
    typer.echo(f"node {name} drained")


@app.command()
def label(
    name: NameArg,
    labels: Annotated[
        list[str],
        typer.Argument(
            help="key=value to set, key- to remove.",
            metavar="KEY=VALUE|KEY-...",
            show_default=False,
        ),
    ],
    context: ContextOpt = None,
) -> None:
    """Set or remove a node's labels (its tags, matched by VMs' --selector)."""
    edits = parse_label_edits(labels)
    with connect(context) as target:
        node = target.client.patch(PLURAL, name, {"metadata": {"labels": edits}})
    typer.echo(f"node {name} labeled: {labels_text(dig(node, 'metadata.labels'))}")
