"""`shoal warmpool`: saved, ready-to-resume VMs of a VMConfig (WarmPool objects); a deploy from
that VMConfig claims one of the pool's entries instead of booting cold."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

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
    conditions_rows,
    created_age,
    dig,
    labels_text,
    print_kv,
    print_list,
    print_object,
    print_section,
)
from shoal.cli.parse import parse_duration, parse_pairs
from shoal.cli.removal import delete_each
from shoal.cli.vm import PLURAL as VM_PLURAL
from shoal.cli.vm import TimeoutOpt
from shoal.cli.wait import Judge, Objects, Verdict, follow
from shoal.client import Client, Obj
from shoal.columns import TABLES, seconds, vm_phase, warmpool_last_discard, warmpool_ready
from shoal.model.warmpool import POOL_LABEL

PLURAL = "warmpools"
NOUN = "warmpool"

app = typer.Typer(
    help="Warm pools: saved, ready-to-resume VMs of a VMConfig, claimed by deploys from it.",
    no_args_is_help=True,
)


class Mode(StrEnum):
    suspended = "suspended"
    clone = "clone"


NameArg = Annotated[str, typer.Argument(help="Name of the pool.", show_default=False)]
SizeOpt = Annotated[
    int | None,
    typer.Option(
        "--size", min=0, max=1000, help="Entries the pool keeps saved (server default: 1)."
    ),
]


# -- columns -------------------------------------------------------------------------------

TABLE = TABLES["WarmPool"]
COLUMNS = TABLE.columns
WIDE = TABLE.wide
ENTRY_HEADERS = ["NAME", "NODE", "PHASE", "AGE"]


def entry_rows(entries: list[Obj]) -> list[list[str]]:
    return [
        [
            vm["metadata"]["name"],
            dig(vm, "spec.nodeName") or "<none>",
            vm_phase(vm),
            created_age(vm),
        ]
        for vm in sorted(entries, key=lambda vm: str(vm["metadata"]["name"]))
    ]


def describe(obj: Obj, entries: list[Obj]) -> None:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    pairs = [
        ("Name", obj["metadata"]["name"]),
        ("Namespace", obj["metadata"].get("namespace", "")),
        ("Config", str(spec.get("config", ""))),
        ("Mode", str(spec.get("mode", "suspended"))),
        ("Size", str(spec.get("size", ""))),
        ("Node selector", labels_text(spec.get("nodeSelector"))),
        ("Max idle", seconds("spec.maxIdleSeconds")(obj)),
        ("Max age", seconds("spec.maxAgeSeconds")(obj)),
        ("Ready", warmpool_ready(obj)),
        ("Refilling", str(status.get("refilling", 0))),
        ("Claiming", str(status.get("claiming", 0))),
        ("Last discard", warmpool_last_discard(obj)),
        ("Age", created_age(obj)),
    ]
    if status.get("message"):
        pairs.append(("Message", str(status["message"])))
    print_kv(pairs)
    print_section(
        "Conditions", ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], conditions_rows(obj)
    )
    print_section("Entries", ENTRY_HEADERS, entry_rows(entries))


# -- waiting -------------------------------------------------------------------------------


def _progress_text(pool: Obj) -> str:
    status = pool.get("status") or {}
    text = f"{warmpool_ready(pool)} ready, {status.get('refilling', 0)} refilling"
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready and ready.get("reason") not in ("Full", "Refilling") and ready.get("message"):
        text += f" ({ready['reason']}: {ready['message']})"
    return text


def pool_full(name: str) -> Judge:
    """A judge: done when the pool's status, for its current spec, has size entries ready."""

    def judge(objects: Objects) -> Verdict:
        pool = next(iter(objects.values()), None)
        if pool is None:
            return Verdict("deleted", error=f"warmpool {name} was deleted")
        if dig(pool, "metadata.deletionTimestamp"):
            return Verdict("deleting", error=f"warmpool {name} is being deleted")
        observed = int(dig(pool, "status.observedGeneration", 0))
        generation = int(dig(pool, "metadata.generation", 0))
        fresh = observed > 0 and observed >= generation
        full = int(dig(pool, "status.ready", 0)) >= int(dig(pool, "spec.size", 0))
        return Verdict(_progress_text(pool), done=fresh and full)

    return judge


def wait_full(client: Client, pool: Obj, namespace: str, timeout: float) -> Obj:
    name = pool["metadata"]["name"]
    objects = follow(
        client,
        PLURAL,
        namespace,
        field_selector=f"metadata.name={name}",
        judge=pool_full(name),
        timeout=timeout,
        title=f"waiting for warmpool {name} to fill",
        initial=([pool], str(pool["metadata"].get("resourceVersion") or "")),
    )
    return next(iter(objects.values()), pool)


# -- commands ------------------------------------------------------------------------------


@app.command()
def create(
    name: Annotated[
        str | None,
        typer.Argument(help="Name of the pool (may come from the file).", show_default=False),
    ] = None,
    filename: Annotated[
        Path | None,
        typer.Option(
            "--filename",
            "-f",
            help="YAML/JSON file with the WarmPool (or just its spec); '-' reads stdin.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="VMConfig whose VMs the pool serves (it must set access.secretRef).",
            show_default=False,
        ),
    ] = None,
    size: SizeOpt = None,
    mode: Annotated[
        Mode | None,
        typer.Option(
            "--mode",
            help="suspended: each entry resumed by one VM; clone: one saved state per node that "
            "every VM there starts from (server default: suspended; cannot change later).",
            show_default=False,
        ),
    ] = None,
    node_selector: Annotated[
        list[str] | None,
        typer.Option(
            "--node-selector",
            metavar="KEY=VALUE",
            help="Node label entries must be made on, beyond the VMConfig's (repeatable).",
            show_default=False,
        ),
    ] = None,
    max_idle: Annotated[
        str | None,
        typer.Option(
            "--max-idle",
            help="Discard (and remake) an entry not claimed this long after it was saved: "
            "seconds, or 30m, 2h, 1d.",
            show_default=False,
        ),
    ] = None,
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age",
            help="Discard an entry this long after it was made, claimed or not: seconds, or "
            "30m, 2h, 1d.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the pool has --size entries ready.")
    ] = False,
    timeout: TimeoutOpt = 600.0,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Create a warm pool from flags or from a file (flags override the file's spec)."""
    body: Obj = (
        load_object_file(filename, "WarmPool")
        if filename
        else {"apiVersion": API_VERSION, "kind": "WarmPool"}
    )
    meta: Obj = body.setdefault("metadata", {})
    if name:
        meta["name"] = name
    if not meta.get("name"):
        raise CliError("give the pool a NAME (or metadata.name in the file)")
    flags: dict[str, Any] = {
        "config": config,
        "size": size,
        "mode": mode.value if mode is not None else None,
        "nodeSelector": parse_pairs(node_selector, "--node-selector") if node_selector else None,
        "maxIdleSeconds": parse_duration(max_idle) if max_idle is not None else None,
        "maxAgeSeconds": parse_duration(max_age) if max_age is not None else None,
    }
    spec = {**(body.get("spec") or {}), **{k: v for k, v in flags.items() if v is not None}}
    if not spec.get("config"):
        raise CliError("--config is required (or spec.config in the file)")
    body["spec"] = spec
    with connect(context, namespace) as target:
        created = target.client.create(PLURAL, body, target.namespace)
        if wait:
            created = wait_full(target.client, created, target.namespace, timeout)
    if output in (Format.json, Format.yaml):
        print_object(created, output, lambda obj: describe(obj, []))
    elif wait:
        typer.echo(f"{NOUN} {created['metadata']['name']}: {warmpool_ready(created)} ready")
    else:
        typer.echo(f"{NOUN} {created['metadata']['name']} created")


@app.command("list")
def list_(
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List in every namespace.")
    ] = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List warm pools with how many of their entries are ready."""
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
    """Show one pool: its spec, entry counts, last discard, conditions and entries."""
    entries: list[Obj] = []
    with connect(context, namespace) as target:
        obj = target.client.get(PLURAL, name, target.namespace)
        if output not in (Format.json, Format.yaml):
            selector = f"{POOL_LABEL}={name}"
            listing = fetch_list(target.client, VM_PLURAL, target.namespace, labelSelector=selector)
            entries = listing["items"]
    print_object(obj, output, lambda pool: describe(pool, entries))


@app.command()
def scale(
    name: NameArg,
    size: Annotated[
        int,
        typer.Option("--size", min=0, max=1000, help="Entries the pool keeps saved."),
    ],
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Change how many entries a pool keeps (extra entries are discarded, missing ones made)."""
    with connect(context, namespace) as target:
        obj = target.client.patch(PLURAL, name, {"spec": {"size": size}}, target.namespace)
    typer.echo(f"{NOUN} {name} scaled: size {dig(obj, 'spec.size')}")


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Names of the pools.", show_default=False)],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the pools and their entries are gone.")
    ] = False,
    timeout: TimeoutOpt = 600.0,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete warm pools and their entries (VMs already deployed from them are not affected)."""
    with connect(context, namespace) as target:
        delete_each(target, PLURAL, NOUN, names, target.namespace, wait=wait, timeout=timeout)
