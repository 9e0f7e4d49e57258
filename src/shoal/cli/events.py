"""`shoal events`: what happened to objects, oldest first; `--watch` streams new ones."""

import json
import sys
import time
from collections.abc import Sequence
from typing import Annotated

import typer
import yaml

from shoal.cli.common import ContextOpt, NamespaceOpt, Target, connect, fetch_list
from shoal.cli.output import (
    Column,
    Format,
    OutputOpt,
    dig,
    print_data,
    print_table,
)
from shoal.cli.parse import parse_object_ref
from shoal.client import Obj
from shoal.columns import TABLES
from shoal.errors import Gone, Unavailable

PLURAL = "events"
# Events of cluster-scoped objects (Nodes, Namespaces) are kept in this namespace.
CLUSTER_EVENTS_NAMESPACE = "default"


TABLE = TABLES["Event"]
COLUMNS = TABLE.columns


def sort_key(event: Obj) -> str:
    return str(event.get("lastTimestamp") or event.get("firstTimestamp") or "")


def selector_for(ref: str | None) -> tuple[str | None, str | None]:
    """(fieldSelector, kind) for `--for KIND/NAME`."""
    if not ref:
        return None, None
    kind, name = parse_object_ref(ref)
    return f"involvedObject.kind={kind},involvedObject.name={name}", kind


class RowPrinter:
    """Table rows for a stream: widths fixed by the header and the first rows."""

    def __init__(self, columns: Sequence[Column], first: Sequence[Obj]) -> None:
        self.columns = columns
        rows = [[get(e) for _, get in columns] for e in first]
        self.widths = [
            max([len(h)] + [len(r[i]) for r in rows]) for i, (h, _) in enumerate(columns)
        ]

    def line(self, cells: Sequence[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], self.widths[:-1], strict=True)]
        return "   ".join([*padded, cells[-1]]).rstrip()

    def header(self) -> None:
        typer.echo(self.line([h for h, _ in self.columns]))

    def row(self, event: Obj) -> None:
        typer.echo(self.line([get(event) for _, get in self.columns]))


def emit(event: Obj, fmt: Format, printer: RowPrinter) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(event) + "\n")
    elif fmt is Format.yaml:
        sys.stdout.write("---\n" + yaml.safe_dump(event, sort_keys=False))
    else:
        printer.row(event)
    sys.stdout.flush()


def stream(
    target: Target,
    namespace: str | None,
    selector: str | None,
    rv: str,
    fmt: Format,
    printer: RowPrinter,
    timeout: float | None,
) -> None:
    """Print events as they are added or counted again, until timeout (or Ctrl-C)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    newest = ""
    while deadline is None or time.monotonic() < deadline:
        remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
        try:
            for change in target.client.watch(
                PLURAL,
                namespace,
                resource_version=rv or None,
                timeout=remaining,
                fieldSelector=selector,
            ):
                obj = change.get("object") or {}
                rv = str(dig(obj, "metadata.resourceVersion", rv))
                if change.get("type") in ("ADDED", "MODIFIED"):
                    newest = max(newest, sort_key(obj))
                    emit(obj, fmt, printer)
                if deadline is not None and time.monotonic() >= deadline:
                    return
        except Gone:  # too far behind to replay: list again, print what we have not shown
            listing = fetch_list(target.client, PLURAL, namespace, fieldSelector=selector)
            rv = str(listing["metadata"].get("resourceVersion") or "")
            for obj in sorted(listing["items"], key=sort_key):
                if sort_key(obj) > newest:
                    newest = sort_key(obj)
                    emit(obj, fmt, printer)
        except Unavailable as error:
            typer.echo(f"watch interrupted ({error}); reconnecting", err=True)
            time.sleep(1.0)


def events(
    namespace: NamespaceOpt = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Events of every namespace.")
    ] = False,
    for_: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="KIND/NAME",
            help="Only events about KIND/NAME, e.g. vm/build-1 or node/mac-1.",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="After listing, stream new events.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="With --watch: stop after this many seconds (default: until interrupted).",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
) -> None:
    """List events, oldest first (events of nodes and namespaces are in 'default')."""
    selector, kind = selector_for(for_)
    with connect(context, namespace) as target:
        scope: str | None = target.namespace
        if all_namespaces:
            scope = None
        elif namespace is None and kind in ("Node", "Namespace"):
            scope = CLUSTER_EVENTS_NAMESPACE
        listing = fetch_list(target.client, PLURAL, scope, fieldSelector=selector)
        items = sorted(listing["items"], key=sort_key)
        columns = TABLE.chosen(all_namespaces=scope is None)
        printer = RowPrinter(columns, items)
        if output in (Format.json, Format.yaml) and not watch:
            print_data(listing, output)
            return
        if watch:
            if output in (Format.json, Format.yaml):
                for item in items:
                    emit(item, output, printer)
            else:
                printer.header()
                for item in items:
                    printer.row(item)
            rv = str(listing["metadata"].get("resourceVersion") or "")
            try:
                stream(target, scope, selector, rv, output, printer, timeout)
            except KeyboardInterrupt:
                return
            return
    if not items:
        typer.echo("No events found.", err=True)
        return
    chosen = TABLE.chosen(all_namespaces=scope is None, wide=output is Format.wide)
    print_table([h for h, _ in chosen], [[get(e) for _, get in chosen] for e in items])
