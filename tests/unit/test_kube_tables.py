"""Tables as kubectl reads them, and the Accept headers that ask for them."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from builders import build_vm
from shoal import jsoncodec
from shoal.api.kube.tables import (
    IncludeObject,
    object_table,
    table,
    table_events,
    table_only,
    wants_table,
)
from shoal.columns import TABLES
from shoal.errors import NotAcceptable
from shoal.model.registry import BY_KIND

VM = BY_KIND["VirtualMachine"]
KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


def test_kubectls_accept_asks_for_a_v1_table() -> None:
    assert wants_table(KUBECTL_ACCEPT)
    assert wants_table("application/json; as=Table; v=v1; g=meta.k8s.io")
    assert not wants_table("application/json")
    assert not wants_table(None)
    assert not wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")
    table_only(KUBECTL_ACCEPT)
    table_only("application/json")
    with pytest.raises(NotAcceptable):
        table_only("application/json;as=Table;v=v1beta1;g=meta.k8s.io")


def test_a_table_has_the_cli_columns_then_the_wide_ones_at_priority_one() -> None:
    vm = build_vm("build-1", nodeName="mac-1")
    answer = table(VM, [vm], resource_version="7", cont="abc")
    names = [c["name"] for c in answer["columnDefinitions"]]
    kind = TABLES["VirtualMachine"]
    assert names == [h for h, _ in kind.columns] + [h for h, _ in kind.wide]
    priorities = [c["priority"] for c in answer["columnDefinitions"]]
    assert priorities == [0] * len(kind.columns) + [1] * len(kind.wide)
    assert answer["metadata"] == {"resourceVersion": "7", "continue": "abc"}
    (row,) = answer["rows"]
    assert row["cells"][:3] == ["build-1", vm["status"]["phase"], "mac-1"]
    assert row["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": vm["metadata"],
    }
    assert table(VM, [vm], include=IncludeObject.object)["rows"][0]["object"] == vm
    assert "object" not in table(VM, [vm], include=IncludeObject.none)["rows"][0]


def test_one_object_is_a_one_row_table() -> None:
    vm = build_vm("one")
    answer = jsoncodec.loads(object_table(VM, jsoncodec.dumps(vm), IncludeObject.metadata))
    assert answer["kind"] == "Table" and len(answer["rows"]) == 1


def test_watch_events_become_tables_and_bookmarks_pass_only_when_allowed() -> None:
    vm = build_vm("watched")
    lines = [
        {"type": "ADDED", "object": vm},
        {
            "type": "BOOKMARK",
            "object": {"kind": "VirtualMachine", "metadata": {"resourceVersion": "9"}},
        },
        {"type": "ERROR", "object": {"kind": "Status", "code": 410}},
    ]
    chunk = b"".join(jsoncodec.dumps_bytes(line) + b"\n" for line in lines)

    async def events() -> AsyncIterator[bytes]:
        yield chunk

    async def collect(bookmarks: bool) -> list[dict[str, object]]:
        out = []
        async for piece in table_events(VM, events(), IncludeObject.metadata, bookmarks):
            out += [jsoncodec.loads(line) for line in piece.split(b"\n") if line]
        return out

    without = asyncio.run(collect(False))
    assert [e["type"] for e in without] == ["ADDED", "ERROR"]
    assert without[0]["object"]["kind"] == "Table"  # type: ignore[index]
    assert without[1]["object"] == {"kind": "Status", "code": 410}
    assert [e["type"] for e in asyncio.run(collect(True))] == ["ADDED", "BOOKMARK", "ERROR"]
