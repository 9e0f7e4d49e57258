"""Printing objects: plain parseable tables (Rich), key/value views, JSON and YAML, ages."""

import io
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shoal.client import Obj

# The values and columns live in shoal.columns (shared with the server's kubectl Tables); they are
# imported here, as X as X, for the modules that take them from this one.
from shoal.columns import TIME_FORMAT as TIME_FORMAT
from shoal.columns import Column as Column
from shoal.columns import Getter as Getter
from shoal.columns import age as age
from shoal.columns import created_age as created_age
from shoal.columns import dig as dig
from shoal.columns import field as field
from shoal.columns import human_duration as human_duration
from shoal.columns import human_size as human_size
from shoal.columns import labels_text as labels_text
from shoal.columns import parse_time as parse_time
from shoal.columns import until as until


class Format(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


OutputOpt = Annotated[
    Format,
    typer.Option(
        "--output",
        "-o",
        help="Output format: table, wide (more columns), json or yaml (as the server sent it).",
        case_sensitive=False,
    ),
]

# -- consoles -----------------------------------------------------------------------------


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def console(stderr: bool = False) -> Console:
    """A console on the current stdout/stderr (made per call: tests swap the streams)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, markup=False, soft_wrap=False)


# -- tables -------------------------------------------------------------------------------


LONG_COLUMNS = frozenset({"MESSAGE", "SUBJECTS", "LABELS", "SELECTOR"})
GAP = 3  # spaces between columns
SHORTEST_LONG = 20  # a long column (MESSAGE) is cut to fit a terminal, but not below this


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, tty: bool) -> Table:
    """Columns never shrink below their content, except long text ones on a terminal."""
    table = Table(
        box=None,
        pad_edge=False,
        show_edge=False,
        padding=(0, GAP, 0, 0),
        header_style="bold" if tty else None,
    )
    for index, header in enumerate(headers):
        width = max([len(header)] + [len(str(row[index])) for row in rows])
        long = tty and header in LONG_COLUMNS
        table.add_column(
            header,
            no_wrap=True,
            overflow="ellipsis" if long else "ignore",
            min_width=min(width, max(len(header), SHORTEST_LONG)) if long else width,
        )
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    return table


def table_text(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """The table as plain text: columns aligned with spaces, no colour, no trailing blanks."""
    buffer = io.StringIO()
    plain = Console(
        file=buffer,
        width=100_000,
        color_system=None,
        force_terminal=False,
        highlight=False,
        markup=False,
    )
    plain.print(render_table(headers, list(rows), tty=False))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = list(rows)
    if stdout_is_tty():
        table = render_table(headers, rows, tty=True)
        out = console()
        needed = sum((c.min_width or 0) + GAP for c in table.columns)
        out.width = max(out.width, needed)  # too narrow: lines run long rather than squeeze
        out.print(table)
    else:
        sys.stdout.write(table_text(headers, rows))
        sys.stdout.flush()


def print_kv(pairs: Sequence[tuple[str, str]]) -> None:
    """A vertical key/value view of one object."""
    width = max((len(k) for k, _ in pairs), default=0) + 2
    for key, value in pairs:
        lines = str(value).splitlines() or [""]
        typer.echo(f"{key + ':':<{width}}{lines[0]}".rstrip())
        for line in lines[1:]:
            typer.echo(f"{'':<{width}}{line}".rstrip())


# -- objects and lists --------------------------------------------------------------------


def dump(data: Any, fmt: Format) -> str:
    if fmt is Format.yaml:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return json.dumps(data, indent=2) + "\n"


def print_data(data: Any, fmt: Format) -> None:
    sys.stdout.write(dump(data, fmt))
    sys.stdout.flush()


def print_list(
    listing: Obj,
    fmt: Format,
    columns: Sequence[Column],
    wide: Sequence[Column] = (),
    *,
    first: Sequence[Column] = (),
    empty: str = "No resources found.",
) -> None:
    """A list object as a table (first + columns, and wide after them) or as JSON/YAML."""
    if fmt in (Format.json, Format.yaml):
        print_data(listing, fmt)
        return
    items = listing.get("items") or []
    if not items:
        typer.echo(empty, err=True)
        return
    chosen = [*first, *columns, *(wide if fmt is Format.wide else ())]
    print_table([h for h, _ in chosen], ([get(item) for _, get in chosen] for item in items))


def print_object(obj: Obj, fmt: Format, view: Callable[[Obj], None]) -> None:
    if fmt in (Format.json, Format.yaml):
        print_data(obj, fmt)
    else:
        view(obj)


def conditions_rows(obj: Obj) -> list[list[str]]:
    return [
        [
            str(c.get("type", "")),
            str(c.get("status", "")),
            str(c.get("reason", "")),
            age(c.get("lastTransitionTime")),
            str(c.get("message", "")),
        ]
        for c in dig(obj, "status.conditions", [])
    ]


def print_section(title: str, headers: Sequence[str], rows: list[list[str]]) -> None:
    """A titled sub-table under a key/value view (conditions, tokens, ...)."""
    typer.echo(f"{title}:" + ("" if rows else "  <none>"))
    if rows:
        text = table_text(headers, rows)
        sys.stdout.write("".join("  " + line + "\n" for line in text.splitlines()))
