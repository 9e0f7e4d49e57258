"""shoal.columns: every kind's list columns (the CLI's tables and the server's kubectl Tables)."""

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import columns
from shoal.cli import (
    events,
    image,
    imagecache,
    jointoken,
    namespace,
    node,
    rolebinding,
    runnerpool,
    secret,
    serviceaccount,
    vm,
    vmconfig,
    warmpool,
)
from shoal.columns import (
    JOIN_TOKEN_COLUMNS,
    NAMESPACE_COLUMN,
    TABLES,
    Column,
    KindColumns,
    Usage,
    node_columns,
)
from shoal.model.registry import BY_KIND, KINDS

Obj = dict[str, Any]

# Kinds whose list does not start with NAME: Events start with LAST SEEN, as kubectl's do.
NO_NAME_FIRST = {"Event": "LAST SEEN"}


def every_column(table: KindColumns) -> tuple[Column, ...]:
    return table.chosen(all_namespaces=True, wide=True)


def row(table: KindColumns, obj: Obj, *, wide: bool = False) -> dict[str, str]:
    return {header: get(obj) for header, get in table.chosen(wide=wide)}


def ago(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).strftime(columns.TIME_FORMAT)


# -- the registry ---------------------------------------------------------------------------


def test_every_kind_has_columns_and_only_kinds_do() -> None:
    assert set(TABLES) == {info.kind for info in KINDS}


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_name_comes_first_and_namespace_before_it_across_namespaces(kind: str) -> None:
    table = TABLES[kind]
    first = NO_NAME_FIRST.get(kind, "NAME")
    assert next(h for h, _ in table.chosen()) == first
    assert [h for h, _ in table.chosen(wide=True)][: 1 + table.namespace_when_wide] == (
        ["NAMESPACE", first] if table.namespace_when_wide else [first]
    )
    if BY_KIND[kind].namespaced:
        assert [h for h, _ in table.chosen(all_namespaces=True)][:2] == ["NAMESPACE", first]
        assert table.first(all_namespaces=True) == (NAMESPACE_COLUMN,)
    assert table.first(all_namespaces=False) == ()


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_headers_are_unique_upper_case_and_age_is_there(kind: str) -> None:
    headers = [h for h, _ in every_column(TABLES[kind])]
    assert len(headers) == len(set(headers))
    assert all(h == h.upper() and h.strip() == h and h for h in headers)
    if kind != "Event":
        assert "AGE" in headers


def test_only_vms_show_the_namespace_in_every_wide_list() -> None:
    assert [k for k, t in TABLES.items() if t.namespace_when_wide] == ["VirtualMachine"]
    assert TABLES["VirtualMachine"].first(all_namespaces=False, wide=True) == (NAMESPACE_COLUMN,)
    assert TABLES["VMConfig"].first(all_namespaces=False, wide=True) == ()


def test_the_cli_lists_use_these_columns_not_copies() -> None:
    """One definition of each list: the CLI's modules hold the very tuples of TABLES."""
    for module, kind in [
        (vm, "VirtualMachine"),
        (vmconfig, "VMConfig"),
        (image, "Image"),
        (imagecache, "ImageCache"),
        (secret, "Secret"),
        (runnerpool, "RunnerPool"),
        (warmpool, "WarmPool"),
        (serviceaccount, "ServiceAccount"),
        (rolebinding, "RoleBinding"),
        (namespace, "Namespace"),
        (events, "Event"),
    ]:
        assert module.COLUMNS is TABLES[kind].columns, kind
        if hasattr(module, "WIDE"):
            assert module.WIDE is TABLES[kind].wide, kind
    assert jointoken.COLUMNS is JOIN_TOKEN_COLUMNS
    assert node.node_status is columns.node_status
    assert vm.vm_phase is columns.vm_phase


def test_the_module_is_pure() -> None:
    """The server imports it: no CLI, terminal or HTTP client libraries come with it."""
    code = (
        "import sys, shoal.columns; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'rich', 'httpx', 'click') or m.startswith('shoal.cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- minimal and full objects ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_getters_take_a_bare_object(kind: str) -> None:
    bare: Obj = {"metadata": {"name": "x"}}
    cells = {h: get(bare) for h, get in every_column(TABLES[kind])}
    assert all(isinstance(c, str) for c in cells.values())
    if kind not in NO_NAME_FIRST:
        assert cells["NAME"] == "x"
        assert cells["AGE"] == "<unknown>"
    assert all(isinstance(get({}), str) for _, get in every_column(TABLES[kind]))


def test_join_token_columns() -> None:
    token = {"id": "abc", "createdAt": ago(timedelta(minutes=5)), "expiresAt": None}
    assert [get(token) for _, get in JOIN_TOKEN_COLUMNS] == ["abc", "5m", "never"]
    assert [get({}) for _, get in JOIN_TOKEN_COLUMNS] == ["", "<unknown>", "never"]


def test_virtual_machine_row() -> None:
    obj: Obj = {
        "metadata": {
            "name": "build-1",
            "namespace": "ci",
            "creationTimestamp": ago(timedelta(minutes=3)),
        },
        "spec": {
            "image": "macos-15",
            "cpu": 4,
            "memory": "8Gi",
            "disk": "60Gi",
            "ports": [{"guest": 22}],
        },
        "status": {
            "phase": "Running",
            "ports": [{"guest": 22, "host": 40022, "address": "10.0.0.5"}],
        },
    }
    table = TABLES["VirtualMachine"]
    assert row(table, obj, wide=True) == {
        "NAMESPACE": "ci",
        "NAME": "build-1",
        "PHASE": "Running",
        "NODE": "<none>",
        "IMAGE": "macos-15",
        "CPU": "4",
        "MEMORY": "8Gi",
        "AGE": "3m",
        "DISK": "60Gi",
        "PORTS": "10.0.0.5:40022->22",
        "MESSAGE": "",
    }
    deleting = {**obj, "metadata": {**obj["metadata"], "deletionTimestamp": ago(timedelta())}}
    assert row(table, deleting)["PHASE"] == "Terminating"
    unmapped = {**obj, "status": {}}
    assert row(table, unmapped, wide=True)["PORTS"] == "22"
    assert row(table, unmapped)["PHASE"] == "Pending"


def test_node_row_with_and_without_usage() -> None:
    obj: Obj = {
        "metadata": {"name": "mac-1", "labels": {"xcode": "16"}},
        "spec": {"unschedulable": True},
        "status": {
            "backend": "tart",
            "arch": "arm64",
            "os": "darwin",
            "addresses": ["10.0.0.1"],
            "agentVersion": "1.2.3",
            "allocatable": {"cpu": 8, "memory": "16Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    unknown = row(TABLES["Node"], obj, wide=True)
    assert unknown == {
        "NAME": "mac-1",
        "STATUS": "Ready,SchedulingDisabled",
        "BACKEND": "tart",
        "ARCH": "arm64",
        "CPU": "?/8",
        "MEMORY": "?/16Gi",
        "VMS": "?",
        "AGE": "<unknown>",
        "OS": "darwin",
        "ADDRESSES": "10.0.0.1",
        "VERSION": "1.2.3",
        "HEARTBEAT": "<unknown>",
        "LABELS": "xcode=16",
    }
    used = row(node_columns({"mac-1": Usage(cpu=6, memory=8704 * 2**20, vms=2)}), obj)
    assert (used["CPU"], used["MEMORY"], used["VMS"]) == ("6/8", "8704Mi/16Gi", "2")
    idle = row(node_columns({"other": Usage(cpu=1)}), obj)
    assert (idle["CPU"], idle["MEMORY"], idle["VMS"]) == ("0/8", "0/16Gi", "0")
    assert [h for h, _ in TABLES["Node"].columns] == [h for h, _ in node_columns({}).columns]


def test_image_runnerpool_rolebinding_and_event_rows() -> None:
    img: Obj = {
        "metadata": {"name": "ubuntu"},
        "spec": {
            "os": "linux",
            "arch": "amd64",
            "boot": "efi",
            "sshUser": "ubuntu",
            "source": {"local": {"disk": {"path": "/img/u.qcow2", "size": 23068672}}},
        },
    }
    assert row(TABLES["Image"], img, wide=True) == {
        "NAME": "ubuntu",
        "OS": "linux",
        "ARCH": "amd64",
        "BOOT": "efi",
        "SIZE": "22.0Mi",
        "AGE": "<unknown>",
        "SOURCE": "/img/u.qcow2",
        "SSH USER": "ubuntu",
    }
    pool: Obj = {
        "metadata": {"name": "macs"},
        "spec": {
            "provider": "github",
            "maxRunners": 5,
            "github": {"organization": "acme", "labels": ["macos", "xcode"]},
        },
        "status": {
            "runners": {"idle": 1, "busy": 2},
            "jobsWaiting": 3,
            "conditions": [{"type": "Synced", "status": "False", "reason": "BadToken"}],
        },
    }
    assert row(TABLES["RunnerPool"], pool, wide=True) == {
        "NAME": "macs",
        "CI": "github acme [macos,xcode]",
        "RUNNERS": "3/5",
        "WAITING": "3",
        "SYNCED": "BadToken",
        "AGE": "<unknown>",
        "STATES": "starting=0 idle=1 busy=2 finishing=0",
        "MESSAGE": "",
    }
    binding: Obj = {
        "metadata": {"name": "ci-edit"},
        "roleRef": {"name": "edit"},
        "subjects": [
            {"kind": "ServiceAccount", "namespace": "ci", "name": "bot"},
            {"kind": "User", "name": "ann"},
        ],
    }
    assert row(TABLES["RoleBinding"], binding)["SUBJECTS"] == "serviceaccount:ci:bot,user:ann"
    event: Obj = {
        "metadata": {"name": "vm.1", "namespace": "ci"},
        "involvedObject": {"kind": "VirtualMachine", "name": "build-1"},
        "reason": "Scheduled",
        "message": "bound to mac-1",
        "lastTimestamp": ago(timedelta(seconds=7)),
        "source": {"component": "scheduler"},
    }
    assert row(TABLES["Event"], event, wide=True) == {
        "LAST SEEN": "7s",
        "TYPE": "Normal",
        "REASON": "Scheduled",
        "OBJECT": "virtualmachine/build-1",
        "COUNT": "1",
        "MESSAGE": "bound to mac-1",
        "SOURCE": "{'component': 'scheduler'}",
    }


# -- whatever the object holds: text, never an exception --------------------------------------

T = "2026-01-02T11:57:00.000000Z"
META: Obj = {"name": "x", "namespace": "ns", "creationTimestamp": T, "labels": {"a": "b"}}
# A full object of every kind: the shapes its getters read.
EXAMPLES: dict[str, Obj] = {
    "VirtualMachine": {
        "metadata": {**META, "deletionTimestamp": T},
        "spec": {"image": "i", "cpu": 4, "memory": "8Gi", "disk": "60Gi", "nodeName": "n",
                 "ports": [{"guest": 22}, {"guest": 80}]},
        "status": {"phase": "Running", "message": "m",
                   "ports": [{"guest": 22, "host": 40022, "address": "10.0.0.5"}]},
    },
    "Node": {
        "metadata": {**META, "deletionTimestamp": T},
        "spec": {"unschedulable": True},
        "status": {"backend": "tart", "arch": "arm64", "os": "darwin", "agentVersion": "1",
                   "addresses": ["10.0.0.1"], "lastHeartbeatTime": T,
                   "allocatable": {"cpu": 8, "memory": "16Gi"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    },
    "VMConfig": {
        "metadata": META,
        "spec": {"image": "i", "cpu": 2, "memory": "4Gi", "disk": "20Gi", "os": "linux",
                 "arch": "amd64", "ports": [{"guest": 22}], "nodeSelector": {"a": "b"}},
    },
    "Image": {
        "metadata": META,
        "spec": {"os": "linux", "arch": "arm64", "boot": "efi", "sshUser": "u",
                 "source": {"oci": "ghcr.io/x/y:1",
                            "local": {"disk": {"path": "/d", "size": 1234567},
                                      "kernel": {"path": "/k", "size": 5000}}}},
    },
    "ImageCache": {
        "metadata": META,
        "spec": {"image": "i", "allNodes": False, "nodes": ["a", "b"], "nodeSelector": {"a": "b"}},
        "status": {"ready": 1, "desired": 3, "failed": 1},
    },
    "Secret": {"metadata": META, "type": "ssh", "data": {"b": "eA==", "a": "eQ=="}},
    "RunnerPool": {
        "metadata": META,
        "spec": {"provider": "github", "maxRunners": 5,
                 "github": {"organization": "acme", "repository": "acme/r", "labels": ["l"]},
                 "jenkins": {"url": "http://j", "label": "mac"},
                 "buildkite": {"organization": "bk", "queue": "q"}},
        "status": {"runners": {"starting": 1, "idle": 2, "busy": 3, "finishing": 4},
                   "jobsWaiting": 2, "message": "m",
                   "conditions": [{"type": "Synced", "status": "False", "reason": "Err"}]},
    },
    "WarmPool": {
        "metadata": META,
        "spec": {"config": "c", "mode": "clone", "size": 3, "nodeSelector": {"a": "b"},
                 "maxIdleSeconds": 60, "maxAgeSeconds": 0},
        "status": {"ready": 2, "refilling": 1, "claiming": 0, "lastDiscardReason": "Expired",
                   "lastDiscardTime": T},
    },
    "ServiceAccount": {
        "metadata": META,
        "spec": {"description": "ci"},
        "status": {"tokens": [{"id": "t1", "createdAt": T, "expiresAt": T}]},
    },
    "RoleBinding": {
        "metadata": META,
        "roleRef": {"name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "ns"},
                     {"kind": "User", "name": "bob"}],
    },
    "Namespace": {"metadata": META, "status": {"phase": "Terminating"}},
    "Event": {
        "metadata": META,
        "involvedObject": {"kind": "VirtualMachine", "name": "vm"},
        "reason": "Scheduled", "message": "m", "type": "Warning", "count": 3,
        "firstTimestamp": T, "lastTimestamp": T, "source": {"component": "scheduler"},
    },
}  # fmt: skip


def test_there_is_a_full_example_of_every_kind() -> None:
    assert set(EXAMPLES) == set(TABLES)


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_getters_read_a_full_object(kind: str) -> None:
    cells = [get(EXAMPLES[kind]) for _, get in every_column(TABLES[kind])]
    assert all(isinstance(c, str) and c for c in cells), cells


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


# The field names the getters read, so that arbitrary dicts often have them (in any shape).
FIELDS = sorted({key for example in EXAMPLES.values() for key in _keys(example)})
TEXTS = ["", "0", "8Gi", "1.5Gi", "True", "Ready", "Synced", "github", "jenkins",
         "ServiceAccount", T, "0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z"]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(TEXTS)
    | st.text(max_size=10)
)
keys = st.sampled_from(FIELDS) | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
json_dicts = st.dictionaries(keys, json_values, max_size=6)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """value with some of its parts dropped, or replaced by arbitrary JSON, or added to."""
    if draw(st.integers(0, 4)) == 0:
        return draw(scalars | json_values)
    if isinstance(value, dict):
        kept = {k: draw(mutated(v)) for k, v in value.items() if draw(st.integers(0, 7))}
        return {**draw(st.dictionaries(keys, json_values, max_size=1)), **kept}
    if isinstance(value, list):
        return [draw(mutated(v)) for v in value] + draw(st.lists(json_values, max_size=1))
    return value


@st.composite
def objects(draw: st.DrawFn, kind: str) -> Obj:
    """An object of kind: its full example mutated, or arbitrary JSON in its spec, status and
    other top-level fields."""
    if draw(st.booleans()):
        obj = draw(mutated(EXAMPLES[kind]))
        obj = obj if isinstance(obj, dict) else {}
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        return {**obj, "metadata": {**meta, "name": "x"}}
    arbitrary: Obj = {"metadata": {**draw(json_dicts), "name": "x"}}
    for name in (*BY_KIND[kind].spec_fields, "spec", "status"):
        if draw(st.booleans()):
            arbitrary[name] = draw(json_dicts | json_values)
    return arbitrary


@pytest.mark.parametrize("kind", sorted(TABLES))
@settings(deadline=None)
@given(data=st.data())
def test_getters_return_text_whatever_the_object_holds(kind: str, data: st.DataObject) -> None:
    obj = data.draw(objects(kind))
    tables = [TABLES[kind]]
    if kind == "Node":
        tables.append(node_columns({"x": Usage(1, 2**30, 1)}))
    for table in tables:
        for header, get in every_column(table):
            assert isinstance(get(obj), str), header


@settings(deadline=None)
@given(vms=st.lists(mutated(EXAMPLES["VirtualMachine"]), max_size=4))
def test_node_usage_takes_any_vms(vms: list[Any]) -> None:
    usage = columns.usage_by_node([vm for vm in vms if isinstance(vm, dict)])
    assert all(isinstance(name, str) and u.vms >= 1 for name, u in usage.items())
