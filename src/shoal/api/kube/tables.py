"""Lists, objects and watch events as `meta.k8s.io/v1` Tables, for `kubectl get`.

kubectl asks with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the rows the
server gives it, so `kubectl get vms` shows the columns `shoal vm list` shows (the `-o wide` ones
at priority 1), from the one definition both use (shoal.columns). A row carries the object's
metadata (`includeObject=Metadata`, the default), the whole object (`Object`) or nothing
(`None`), as on a Kubernetes API server.
"""

from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Any

from shoal import jsoncodec
from shoal.columns import TABLES, Column, KindColumns, node_columns
from shoal.errors import NotAcceptable
from shoal.model.registry import KindInfo
from shoal.store.store import Store

TABLE_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"


class IncludeObject(StrEnum):
    none = "None"
    metadata = "Metadata"
    object = "Object"


def wants_table(accept: str | None) -> bool:
    """Whether an Accept header asks for a Table (v1; the v1beta1 form is not served). A client
    that asks only for a Table of another version gets 406 (see table_only)."""
    return any(_is_table(part, "v1") for part in (accept or "").split(","))


def table_only(accept: str | None) -> None:
    """406 for an Accept that names Tables of versions not served and nothing else usable."""
    parts = [part.replace(" ", "") for part in (accept or "").split(",") if part.strip()]
    if parts and all("as=Table" in part and not _is_table(part, "v1") for part in parts):
        raise NotAcceptable(
            f"only meta.k8s.io/v1 Tables are served ({TABLE_TYPE}), or plain application/json"
        )


def _is_table(part: str, version: str) -> bool:
    params = {
        key.strip(): value.strip()
        for key, _, value in (item.partition("=") for item in part.split(";")[1:])
    }
    return (
        params.get("as") == "Table"
        and params.get("g") == "meta.k8s.io"
        and params.get("v") == version
    )


def _definitions(columns: Sequence[Column], priority: int) -> list[dict[str, Any]]:
    return [
        {
            "name": header,
            "type": "string",
            "format": "name" if header == "NAME" else "",
            "description": f"the {header.lower()} column of `shoal ... list`",
            "priority": priority,
        }
        for header, _ in columns
    ]


def _cells(columns: Sequence[Column], obj: dict[str, Any]) -> list[str]:
    return [getter(obj) for _, getter in columns]


def _row_object(info: KindInfo, obj: dict[str, Any], include: IncludeObject) -> Any:
    if include is IncludeObject.object:
        return obj
    if include is IncludeObject.metadata:
        return {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {},
        }
    return None


def columns_of(
    info: KindInfo, objects: Sequence[dict[str, Any]], store: Store | None = None
) -> KindColumns:
    """The kind's columns; a Node's use what its VMs reserve, which the store adds up."""
    if info.kind == "Node" and store is not None:
        names = [str((obj.get("metadata") or {}).get("name", "")) for obj in objects]
        return node_columns(store.node_usages(names))
    return TABLES[info.kind]  # every kind has its columns (tests/unit/test_columns.py)


def table(
    info: KindInfo,
    objects: Sequence[dict[str, Any]],
    *,
    resource_version: str | None = None,
    cont: str | None = None,
    include: IncludeObject = IncludeObject.metadata,
    store: Store | None = None,
) -> dict[str, Any]:
    """A Table of objects of one kind: the CLI's columns, then its wide ones at priority 1."""
    kind = columns_of(info, objects, store)
    every = (*kind.columns, *kind.wide)
    metadata: dict[str, Any] = {}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    if cont:
        metadata["continue"] = cont
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": _cells(every, obj)}
        included = _row_object(info, obj, include)
        if included is not None:
            row["object"] = included
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": _definitions(kind.columns, 0) + _definitions(kind.wide, 1),
        "rows": rows,
    }


def list_table(
    info: KindInfo, list_body: bytes, include: IncludeObject, store: Store | None = None
) -> bytes:
    """The Table of a list answer (its items, version and continue token)."""
    listed = jsoncodec.loads(list_body)
    metadata = listed.get("metadata") or {}
    return jsoncodec.dumps_bytes(
        table(
            info,
            listed.get("items") or [],
            resource_version=metadata.get("resourceVersion"),
            cont=metadata.get("continue"),
            include=include,
            store=store,
        )
    )


def object_table(
    info: KindInfo, body: str | bytes, include: IncludeObject, store: Store | None = None
) -> bytes:
    """The one-row Table of one object (`kubectl get vm NAME`)."""
    obj = jsoncodec.loads(body)
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return jsoncodec.dumps_bytes(
        table(info, [obj], resource_version=version, include=include, store=store)
    )


async def table_events(
    info: KindInfo,
    events: AsyncIterator[bytes],
    include: IncludeObject,
    bookmarks: bool,
    store: Store | None = None,
) -> AsyncIterator[bytes]:
    """Watch events (newline-terminated JSON) with each object as a one-row Table. BOOKMARKs pass
    as they are when the client allowed them (allowWatchBookmarks) and are dropped otherwise;
    ERROR events pass as they are."""
    async for chunk in events:
        out: list[bytes] = []
        for line in chunk.split(b"\n"):
            if not line:
                continue
            event = jsoncodec.loads(line)
            kind = event.get("type")
            if kind == "BOOKMARK":
                if bookmarks:
                    out.append(line + b"\n")
                continue
            if kind != "ERROR":
                event["object"] = table(
                    info,
                    [event["object"]],
                    resource_version=(event["object"].get("metadata") or {}).get("resourceVersion"),
                    include=include,
                    store=store,
                )
            out.append(jsoncodec.dumps_bytes(event) + b"\n")
        if out:
            yield b"".join(out)
