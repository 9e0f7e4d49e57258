"""`shoal usage`: what VMs held over a window, per namespace, image and/or node (VM-hours,
vCPU-hours, memory GiB-hours), from the controller's record of every change."""

import csv
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from shoal.cli.common import CliError, ContextOpt, NamespaceOpt, connect
from shoal.cli.output import Format, print_data, print_table
from shoal.cli.parse import parse_duration
from shoal.client import API

GROUPS = ("namespace", "image", "node")


class UsageFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def usage(
    since: Annotated[
        str, typer.Option(help="The window: this long back (90m, 12h, 7d, 1w...).")
    ] = "7d",
    until: Annotated[
        str | None,
        typer.Option(help="...up to this long back (default: now).", show_default=False),
    ] = None,
    by: Annotated[
        str, typer.Option(help="Group by namespace, image and/or node, comma-separated.")
    ] = "namespace",
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Every namespace (cluster admins).")
    ] = False,
    output: Annotated[
        UsageFormat, typer.Option("--output", "-o", help="table, json or csv (seconds).")
    ] = UsageFormat.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """What VMs held while bound to a node (saved warm-pool entries excepted): per group, the
    VMs, their hours, vCPU-hours and memory GiB-hours in the window. Nothing is sampled: the
    controller records each VM's holding as it changes. For charging back, or planning."""
    groups = [g.strip() for g in by.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if not groups or unknown:
        raise CliError(f"--by: give namespace, image and/or node (got {by!r})")
    params: dict[str, Any] = {
        "sinceSeconds": parse_duration(since),
        "untilSeconds": parse_duration(until) if until else 0,
        "groupBy": groups,
    }
    with connect(context, namespace) as target:
        if not all_namespaces:
            params["namespace"] = target.namespace
        answer = target.client.request("GET", f"{API}/usage", params=params)
    items: list[dict[str, Any]] = answer.get("items") or []
    if output is UsageFormat.json:
        print_data(answer, Format.json)
    elif output is UsageFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([*groups, "vms", "vmSeconds", "cpuSeconds", "memoryByteSeconds"])
        for item in items:
            writer.writerow(
                [*(item[g] for g in groups), item["vms"], *(
                    f"{item[k]:.3f}" for k in ("vmSeconds", "cpuSeconds", "memoryByteSeconds")
                )]
            )  # fmt: skip
    else:
        typer.echo(f"from {answer['since']} to {answer['until']}", err=True)
        print_table(
            [*(g.upper() for g in groups), "VMS", "VM-HOURS", "VCPU-HOURS", "MEMORY-GIB-HOURS"],
            (
                [
                    *(str(item[g]) for g in groups),
                    str(item["vms"]),
                    _hours(item["vmSeconds"]),
                    _hours(item["cpuSeconds"]),
                    _hours(item["memoryByteSeconds"] / 2**30),
                ]
                for item in items
            ),
        )
