"""Output helpers: ages, plain tables, the VM and node columns, list passthrough."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from shoal.cli import node, vm
from shoal.cli.common import fetch_list
from shoal.cli.output import (
    Format,
    age,
    human_duration,
    print_list,
    table_text,
    until,
)

NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)


def stamp(delta: timedelta) -> str:
    return (NOW - delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=5), "5s"),
        (timedelta(seconds=59), "59s"),
        (timedelta(minutes=3, seconds=20), "3m"),
        (timedelta(hours=2, minutes=59), "2h"),
        (timedelta(days=4, hours=3), "4d"),
        (timedelta(seconds=-3), "0s"),  # clock skew: never negative
    ],
)
def test_age(delta: timedelta, text: str) -> None:
    assert age(stamp(delta), NOW) == text


def test_age_unknown_and_until() -> None:
    assert age(None, NOW) == "<unknown>"
    assert age("yesterday", NOW) == "<unknown>"
    assert human_duration(86400 * 10) == "10d"
    assert until(None, NOW) == "never"
    assert until(stamp(timedelta(minutes=-59, seconds=-30)), NOW) == "in 59m"
    assert until(stamp(timedelta(minutes=1)), NOW) == "expired"


SAMPLE_VM: dict[str, Any] = {
    "apiVersion": "shoal.dev/v1",
    "kind": "VirtualMachine",
    "metadata": {
        "name": "build-1",
        "namespace": "team-a",
        "creationTimestamp": "2026-01-02T11:57:00.000000Z",
        "resourceVersion": "42",
    },
    "spec": {
        "image": "ghcr.io/acme/macos:15",
        "cpu": 4,
        "memory": "8Gi",
        "disk": "60Gi",
        "nodeName": "mac-1",
        "ports": [{"guest": 22}],
    },
    "status": {
        "phase": "Pending",
        "message": "0/3 nodes available: 3 insufficient memory",
        "ports": [{"guest": 22, "host": 40022, "address": "10.0.0.5"}],
    },
}


def test_table_rendering_is_plain_and_aligned() -> None:
    columns = [*vm.COLUMNS, *vm.WIDE]
    rows = [[get(SAMPLE_VM) for _, get in columns]]
    text = table_text([h for h, _ in columns], rows)
    lines = text.splitlines()
    assert "\x1b" not in text
    assert lines[0].split() == [
        "NAME",
        "PHASE",
        "NODE",
        "IMAGE",
        "CPU",
        "MEMORY",
        "AGE",
        "DISK",
        "PORTS",
        "MESSAGE",
    ]
    cells = lines[1].split(None, 9)
    assert cells[:6] == ["build-1", "Pending", "mac-1", "ghcr.io/acme/macos:15", "4", "8Gi"]
    assert cells[7:9] == ["60Gi", "10.0.0.5:40022->22"]
    assert cells[9] == "0/3 nodes available: 3 insufficient memory"
    # columns line up: every value starts where its header starts
    assert lines[1].index("Pending") == lines[0].index("PHASE")
    assert all(line == line.rstrip() for line in lines)


def test_long_cells_are_not_wrapped_or_cut() -> None:
    message = "x" * 500
    text = table_text(["NAME", "MESSAGE"], [["a", message], ["b", "[bold]not markup[/]"]])
    assert message in text
    assert "[bold]not markup[/]" in text
    assert len(text.splitlines()) == 3


def test_print_list_json_and_yaml_pass_the_server_object_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    listing = {
        "apiVersion": "shoal.dev/v1",
        "kind": "VirtualMachineList",
        "metadata": {"resourceVersion": "42"},
        "items": [SAMPLE_VM],
    }
    print_list(listing, Format.json, vm.COLUMNS)
    assert json.loads(capsys.readouterr().out) == listing
    print_list(listing, Format.yaml, vm.COLUMNS)
    assert yaml.safe_load(capsys.readouterr().out) == listing


def test_print_list_empty_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    print_list({"items": []}, Format.table, vm.COLUMNS)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "No resources found" in captured.err


def test_vm_phase_shows_terminating() -> None:
    deleting = {**SAMPLE_VM, "metadata": {**SAMPLE_VM["metadata"], "deletionTimestamp": "x"}}
    assert vm.vm_phase(deleting) == "Terminating"


def node_obj(ready: str, unschedulable: bool) -> dict[str, object]:
    return {
        "metadata": {"name": "mac-1", "creationTimestamp": stamp(timedelta(days=1))},
        "spec": {"unschedulable": unschedulable},
        "status": {
            "backend": "tart",
            "arch": "arm64",
            "allocatable": {"cpu": 8, "memory": "16Gi"},
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def test_node_status_and_usage() -> None:
    assert node.node_status(node_obj("True", False)) == "Ready"
    assert node.node_status(node_obj("True", True)) == "Ready,SchedulingDisabled"
    assert node.node_status(node_obj("False", False)) == "NotReady"
    assert node.node_status({"metadata": {}, "status": {}}) == "NotReady"
    vms = [
        {"spec": {"nodeName": "mac-1", "cpu": 4, "memory": "8Gi"}},
        {"spec": {"nodeName": "mac-1", "cpu": 2, "memory": "512Mi"}},
        {"spec": {"nodeName": "mac-2", "cpu": 1, "memory": "1Gi"}},
        {"spec": {"cpu": 16, "memory": "64Gi"}},  # pending: counts nowhere
    ]
    usage = node.usage_by_node(vms)
    assert set(usage) == {"mac-1", "mac-2"}
    row = node.node_row(node_obj("True", False), usage["mac-1"], wide=False)
    assert row[:7] == ["mac-1", "Ready", "tart", "arm64", "6/8", "8704Mi/16Gi", "2"]
    assert node.node_row(node_obj("True", False), None, wide=False)[4] == "?/8"


class PagingClient:
    """Serves three pages of one item each, linked by continue tokens."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def list(self, plural: str, namespace: str | None = None, **params: Any) -> dict[str, Any]:
        self.calls.append(params)
        page = int(params.get("continue") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(100 + page)}
        if page < 2:
            meta["continue"] = str(page + 1)
        return {"kind": "VirtualMachineList", "metadata": meta, "items": [{"n": page}]}


def test_fetch_list_follows_continue_tokens() -> None:
    client = PagingClient()
    listing = fetch_list(client, "virtualmachines", "ns", labelSelector="a=b", fieldSelector=None)  # type: ignore[arg-type]
    assert listing == {
        "kind": "VirtualMachineList",
        "metadata": {"resourceVersion": "100"},
        "items": [{"n": 0}, {"n": 1}, {"n": 2}],
    }
    assert [c["continue"] for c in client.calls] == [None, "1", "2"]
    assert all(c["labelSelector"] == "a=b" and "fieldSelector" not in c for c in client.calls)
