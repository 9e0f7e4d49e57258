"""merge_patch, apply_user_fields and Objects (create/replace/patch/status/delete), and quantities."""

import copy
import decimal
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from shoal.api.hooks import CREATE_HOOKS, UPDATE_HOOKS
from shoal.api.objects import Objects, apply_user_fields, dump, merge_patch, validate
from shoal.errors import AlreadyExists, BadRequest, Conflict, Forbidden, Invalid, NotFound
from shoal.model.kinds import Image, Namespace, Node, VirtualMachine, VMConfig
from shoal.model.registry import BY_KIND
from shoal.quantity import MAX_BYTES, format_bytes, parse_bytes
from shoal.store.store import Store

Obj = dict[str, Any]
VM_INFO = BY_KIND["VirtualMachine"]
GI, MI = 2**30, 2**20

# -- merge_patch: RFC 7386 ----------------------------------------------------------------

RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_EXAMPLES)
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    before_target, before_patch = copy.deepcopy(target), copy.deepcopy(patch)
    merged = merge_patch(target, patch)
    assert merged == result
    assert target == before_target and patch == before_patch  # inputs are not changed


def test_merge_patch_result_shares_nothing_with_inputs() -> None:
    target = {"a": {"list": [1]}, "keep": {"x": [1]}}
    patch = {"a": {"list": [2], "new": {"y": [3]}}}
    merged = merge_patch(target, patch)
    merged["a"]["new"]["y"].append(4)
    merged["a"]["list"].append(5)
    merged["keep"]["x"].append(6)
    assert patch == {"a": {"list": [2], "new": {"y": [3]}}}
    assert target == {"a": {"list": [1]}, "keep": {"x": [1]}}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)
_json_object = st.dictionaries(st.text(max_size=3), _json, max_size=4)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


@given(target=_json_object, patch=_json_object)
def test_merge_patch_is_idempotent(target: Obj, patch: Obj) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once
    # every non-null key the patch names ends up as the patch says (null-free)
    for key, value in patch.items():
        if value is None:
            assert key not in once
        elif not isinstance(value, dict):
            assert once[key] == value


@given(target=_json_object)
def test_merge_patch_with_itself_without_nulls_is_identity(target: Obj) -> None:
    clean = _without_nulls(target)
    assert merge_patch(clean, clean) == clean
    assert merge_patch(target, {}) == target


# -- apply_user_fields ----------------------------------------------------------------------


def stored_vm(**spec: Any) -> Obj:
    """A VM as the store holds it after create, bind and a status write."""
    vm = dump(
        VirtualMachine.model_validate(
            {
                "metadata": {"name": "vm", "namespace": "default", "labels": {"a": "1"}},
                "spec": {"image": "ubuntu", "cpu": 2, **spec},
            }
        )
    )
    vm["metadata"].update(
        uid="1f0c8f0e-0000-4000-8000-000000000001",
        resourceVersion="7",
        generation=1,
        creationTimestamp="2024-01-01T00:00:00.000000Z",
        finalizers=["shoal.dev/agent"],
    )
    vm["spec"]["nodeName"] = "host-1"
    vm["status"].update(phase="Running", observedGeneration=1)
    return vm


def incoming_from(current: Obj, **changes: Any) -> Obj:
    """What a client PUTs: the object it read, with changes, through the model."""
    body = copy.deepcopy(current)
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return validate(VM_INFO, body)


def test_unchanged_object_is_no_write() -> None:
    current = stored_vm()
    assert apply_user_fields(VM_INFO, current, incoming_from(current)) is None


def test_spec_change_bumps_generation_and_keeps_server_fields() -> None:
    current = stored_vm()
    incoming = incoming_from(current, spec__cpu=4)
    # whatever the client says about server-owned fields is ignored
    incoming["metadata"].update(
        uid="other", resourceVersion="1", generation=99, creationTimestamp="x"
    )
    incoming["status"] = {"phase": "Failed", "message": "client says so"}
    result = apply_user_fields(VM_INFO, current, incoming)
    assert result is not None
    assert result["spec"]["cpu"] == 4
    assert result["metadata"]["generation"] == 2
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        assert result["metadata"][key] == current["metadata"][key]
    assert result["status"] == current["status"]
    assert result["spec"]["nodeName"] == "host-1"
    assert current["spec"]["cpu"] == 2  # the current object is not changed in place


def test_metadata_change_does_not_bump_generation() -> None:
    current = stored_vm()
    result = apply_user_fields(
        VM_INFO,
        current,
        incoming_from(current, metadata__labels={"b": "2"}, metadata__annotations={"n": "x"}),
    )
    assert result is not None
    assert result["metadata"]["labels"] == {"b": "2"}
    assert result["metadata"]["annotations"] == {"n": "x"}
    assert result["metadata"]["generation"] == 1
    assert result["spec"] == current["spec"]


def test_finalizers_are_user_fields() -> None:
    current = stored_vm()
    result = apply_user_fields(VM_INFO, current, incoming_from(current, metadata__finalizers=[]))
    assert result is not None
    assert result["metadata"]["finalizers"] == []
    assert result["metadata"]["generation"] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("image", "debian"), ("os", "macos"), ("arch", "arm64")],
)
def test_immutable_spec_fields_are_rejected(field: str, value: str) -> None:
    current = stored_vm()
    with pytest.raises(Invalid) as caught:
        apply_user_fields(VM_INFO, current, incoming_from(current, **{f"spec__{field}": value}))
    assert caught.value.code == 422
    assert caught.value.details["field"] == f"spec.{field}"


def test_node_name_cannot_be_written_by_clients() -> None:
    bound = stored_vm()
    with pytest.raises(Invalid) as caught:
        apply_user_fields(VM_INFO, bound, incoming_from(bound, spec__nodeName="host-2"))
    assert caught.value.details["field"] == "spec.nodeName"

    pending = stored_vm()
    del pending["spec"]["nodeName"]
    with pytest.raises(Invalid):
        apply_user_fields(VM_INFO, pending, incoming_from(pending, spec__nodeName="host-2"))

    # echoing it back, or leaving it out, keeps the scheduler's value
    echoed = apply_user_fields(VM_INFO, bound, incoming_from(bound, spec__cpu=3))
    assert echoed is not None and echoed["spec"]["nodeName"] == "host-1"
    omitted = apply_user_fields(
        VM_INFO, bound, incoming_from(bound, spec__nodeName=None, spec__cpu=3)
    )
    assert omitted is not None and omitted["spec"]["nodeName"] == "host-1"
    assert apply_user_fields(VM_INFO, bound, incoming_from(bound, spec__nodeName=None)) is None


# -- Objects on a real store ---------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    yield store
    store.close()


@pytest.fixture
def objects(store: Store) -> Objects:
    objs = Objects(store, CREATE_HOOKS, UPDATE_HOOKS)
    objs.create(
        BY_KIND["Namespace"], None, Namespace.model_validate({"metadata": {"name": "default"}})
    )
    for name in ("ubuntu", "debian"):  # the Images the VMs here name
        image = {"metadata": {"name": name}, "spec": {"source": {"oci": f"registry.test/{name}"}}}
        objs.create(BY_KIND["Image"], None, Image.model_validate(image))
    return objs


def create_vm(objects: Objects, name: str = "vm", **spec: Any) -> Obj:
    model = VirtualMachine.model_validate(
        {"metadata": {"name": name}, "spec": {"image": "ubuntu", **spec}}
    )
    return objects.create(VM_INFO, "default", model)


def test_create_strips_server_metadata_and_sets_default_status(objects: Objects) -> None:
    model = VirtualMachine.model_validate(
        {
            "metadata": {"name": "vm", "uid": "mine", "resourceVersion": "99", "generation": 5},
            "spec": {"image": "ubuntu"},
            "status": {"phase": "Running"},
        }
    )
    created = objects.create(VM_INFO, "default", model)
    assert created["metadata"]["uid"] != "mine"
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["namespace"] == "default"
    assert created["status"]["phase"] == "Pending"
    assert created["spec"]["memory"] == "2Gi"  # model defaults filled in


def test_create_rules(objects: Objects, store: Store) -> None:
    with pytest.raises(NotFound):
        objects.create(
            VM_INFO,
            "nope",
            VirtualMachine.model_validate({"metadata": {"name": "v"}, "spec": {"image": "x"}}),
        )
    with pytest.raises(BadRequest):
        objects.create(
            VM_INFO,
            "default",
            VirtualMachine.model_validate(
                {"metadata": {"name": "v", "namespace": "other"}, "spec": {"image": "x"}}
            ),
        )
    with pytest.raises(BadRequest):
        objects.create(
            BY_KIND["Node"],
            None,
            Node.model_validate({"metadata": {"name": "n", "namespace": "default"}}),
        )
    with pytest.raises(Invalid):
        create_vm(objects, "bound", nodeName="host-1")  # only the scheduler binds
    with pytest.raises(Invalid):
        objects.create(
            VM_INFO,
            "default",
            VirtualMachine.model_validate({"metadata": {}, "spec": {"image": "ubuntu"}}),
        )
    create_vm(objects, "dup")
    with pytest.raises(AlreadyExists):
        create_vm(objects, "dup")
    # a namespace being deleted takes nothing new
    objects.delete(BY_KIND["Namespace"], None, "default")
    assert store.get("Namespace", "", "default")["status"]["phase"] == "Terminating"
    with pytest.raises(Forbidden):
        create_vm(objects, "late")


def test_create_with_generate_name(objects: Objects) -> None:
    model = VirtualMachine.model_validate(
        {"metadata": {"generateName": "ci-"}, "spec": {"image": "ubuntu"}}
    )
    names = {objects.create(VM_INFO, "default", model)["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5
    assert all(name.startswith("ci-") and len(name) == 8 for name in names)


def test_replace_is_compare_and_swap(objects: Objects) -> None:
    created = create_vm(objects)
    body = copy.deepcopy(created)
    body["spec"]["cpu"] = 4
    replaced = objects.replace(VM_INFO, "default", "vm", VirtualMachine.model_validate(body))
    assert replaced["spec"]["cpu"] == 4
    assert replaced["metadata"]["generation"] == 2
    body["spec"]["cpu"] = 8  # body still carries the old resourceVersion
    with pytest.raises(Conflict):
        objects.replace(VM_INFO, "default", "vm", VirtualMachine.model_validate(body))
    with pytest.raises(BadRequest):
        objects.replace(VM_INFO, "default", "other", VirtualMachine.model_validate(replaced))


def test_patch_merges_and_ignores_status(objects: Objects, store: Store) -> None:
    create_vm(objects)
    patched = objects.patch(
        VM_INFO,
        "default",
        "vm",
        {"metadata": {"labels": {"team": "a"}}, "spec": {"cpu": 3}, "status": {"phase": "Running"}},
    )
    assert patched["metadata"]["labels"] == {"team": "a"}
    assert patched["spec"]["cpu"] == 3
    assert patched["spec"]["image"] == "ubuntu"
    assert patched["status"]["phase"] == "Pending"
    assert patched["metadata"]["generation"] == 2
    unlabelled = objects.patch(VM_INFO, "default", "vm", {"metadata": {"labels": {"team": None}}})
    assert unlabelled["metadata"]["labels"] == {}
    assert unlabelled["metadata"]["generation"] == 2
    with pytest.raises(Invalid):
        objects.patch(VM_INFO, "default", "vm", {"spec": {"image": "debian"}})
    with pytest.raises(Invalid):
        objects.patch(VM_INFO, "default", "vm", {"spec": {"cpu": 0}})
    with pytest.raises(BadRequest):
        objects.patch(VM_INFO, "default", "vm", [{"op": "replace"}])
    with pytest.raises(Conflict):
        objects.patch(VM_INFO, "default", "vm", {"metadata": {"resourceVersion": "1"}})
    assert store.get("VirtualMachine", "default", "vm") == unlabelled


def test_updates_may_not_bring_in_a_script_that_cannot_run_or_an_image_that_names_nothing(
    objects: Objects, store: Store
) -> None:
    created = create_vm(objects)
    with pytest.raises(Invalid, match=r"^spec\.startupScript: needs spec\.access\.secretRef"):
        objects.patch(VM_INFO, "default", "vm", {"spec": {"startupScript": "echo hi"}})
    body = copy.deepcopy(created)
    body["spec"]["startupScript"] = "echo hi"
    with pytest.raises(Invalid, match=r"^spec\.startupScript"):
        objects.replace(VM_INFO, "default", "vm", VirtualMachine.model_validate(body))
    with pytest.raises(Invalid, match=r"^spec\.deleteWhenScriptExits"):
        objects.patch(VM_INFO, "default", "vm", {"spec": {"deleteWhenScriptExits": True}})
    # a change elsewhere leaves a script stored before these rules alone
    store.mutate("VirtualMachine", "default", "vm", lambda vm: _with_script(vm, "echo old"))
    labelled = objects.patch(VM_INFO, "default", "vm", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["spec"]["startupScript"] == "echo old"
    cleared = objects.patch(VM_INFO, "default", "vm", {"spec": {"startupScript": None}})
    assert "startupScript" not in cleared["spec"]

    config_info = BY_KIND["VMConfig"]
    config = VMConfig.model_validate({"metadata": {"name": "c"}, "spec": {"image": "ubuntu"}})
    objects.create(config_info, "default", config)
    assert objects.patch(config_info, "default", "c", {"spec": {"image": "debian"}})
    assert objects.patch(config_info, "default", "c", {"spec": {"image": "ghcr.io/a/b:1"}})
    with pytest.raises(Invalid, match=r"^spec\.image: no Image named 'nope'"):
        objects.patch(config_info, "default", "c", {"spec": {"image": "nope"}})
    assert store.get("VMConfig", "default", "c")["spec"]["image"] == "ghcr.io/a/b:1"
    # a VMConfig is a template: its script may wait for the VM to give the access, and a VM
    # deployed from it without one is refused
    objects.patch(config_info, "default", "c", {"spec": {"startupScript": "echo hi"}})
    with pytest.raises(Invalid, match=r"^spec\.startupScript \(from VMConfig 'c'\): needs"):
        create_vm(objects, "from-c", config="c")
    with pytest.raises(NotFound):
        store.get("VirtualMachine", "default", "from-c")


def _with_script(vm: Obj, script: str) -> Obj:
    return vm | {"spec": vm["spec"] | {"startupScript": script}}


def test_status_write_leaves_spec_alone(objects: Objects) -> None:
    created = create_vm(objects)
    written = objects.write_status(
        VM_INFO,
        "default",
        "vm",
        {"status": {"phase": "Running"}, "spec": {"cpu": 64}},
        is_patch=True,
    )
    assert written["status"]["phase"] == "Running"
    assert written["spec"] == created["spec"]
    assert written["metadata"]["generation"] == 1
    same = objects.write_status(
        VM_INFO, "default", "vm", {"status": {"phase": "Running"}}, is_patch=True
    )
    assert same["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    with pytest.raises(Invalid):
        objects.write_status(
            VM_INFO, "default", "vm", {"status": {"phase": "Sleeping"}}, is_patch=True
        )


def test_finalizer_release_through_patch_deletes(objects: Objects, store: Store) -> None:
    create_vm(objects)
    store.mutate(
        "VirtualMachine",
        "default",
        "vm",
        lambda vm: vm | {"metadata": vm["metadata"] | {"finalizers": ["shoal.dev/agent"]}},
    )
    marked, gone = objects.delete(VM_INFO, "default", "vm")
    assert not gone and marked["metadata"]["deletionTimestamp"]
    objects.patch(VM_INFO, "default", "vm", {"metadata": {"finalizers": []}})
    with pytest.raises(NotFound):
        store.get("VirtualMachine", "default", "vm")


# -- quantities ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("1024", 1024),
        ("1Ki", 1024),
        ("512Mi", 512 * MI),
        ("8Gi", 8 * GI),
        ("1.5Gi", 3 * GI // 2),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("1k", 1000),
        ("2M", 2 * 10**6),
        ("1G", 10**9),
        (" 4Gi ", 4 * GI),
        (2048, 2048),
    ],
)
def test_parse_bytes(text: str | int, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize(
    "text", ["", "Gi", "8 Gi", "8gi", "8GB", "-1", "0", "0Gi", "1.5.5", "2Pi", "1e3", True]
)
def test_parse_bytes_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (1023, "1023"),
        (1024, "1Ki"),
        (1536 * MI, "1536Mi"),
        (8 * GI, "8Gi"),
        (2**50, "1Pi"),
    ],
)
def test_format_bytes(value: int, text: str) -> None:
    assert format_bytes(value) == text


@given(st.integers(1, MAX_BYTES))
def test_format_then_parse_round_trips(value: int) -> None:
    assert parse_bytes(format_bytes(value)) == value


@given(
    st.integers(1, 2**20),
    st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"]),
)
def test_parse_then_format_round_trips(number: int, suffix: str) -> None:
    text = f"{number}{suffix}"
    unit = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    unit |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    assume(number * unit[suffix] <= MAX_BYTES)
    value = parse_bytes(text)
    assert value == number * unit[suffix]
    assert parse_bytes(format_bytes(value)) == value
    if suffix in ("", "Ki", "Mi", "Gi", "Ti") and number % 1024:
        assert format_bytes(value) == text  # the shortest exact form is the one given


@given(
    st.integers(1, 99_999),
    st.integers(0, 3),
    st.sampled_from(["k", "M", "G", "T", "Ki", "Mi", "Gi"]),
)
@example(201, 2, "k")  # "2.01k" is 2010 bytes
@example(435, 2, "M")  # "4.35M"
def test_decimal_quantities_are_exact(digits: int, places: int, suffix: str) -> None:
    """A fraction that names a whole number of bytes parses to exactly that number."""
    number = decimal.Decimal(digits).scaleb(-places)
    unit = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    exact = number * unit[suffix]
    assume(exact == exact.to_integral_value() and exact <= MAX_BYTES)
    assert parse_bytes(f"{number}{suffix}") == int(exact)


def test_sizes_for_people_are_exact_when_whole_and_short_otherwise() -> None:
    from shoal.quantity import describe_bytes

    assert describe_bytes(8 * 2**30) == "8Gi"
    assert describe_bytes(1536 * 2**20) == "1536Mi"
    assert describe_bytes(25_132_244 * 1024) == "24.0Gi"
    assert describe_bytes(3 * 2**20 + 5) == "3.0Mi"
    assert describe_bytes(1000) == "1000B"
