"""Label and field selectors in the Kubernetes syntax."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import BadRequest
from shoal.selectors import (
    Requirement,
    field_predicate,
    label_predicate,
    lookup,
    parse_field_selector,
    parse_label_selector,
)

Obj = dict[str, Any]


def labelled(**labels: str) -> Obj:
    return {"metadata": {"name": "x", "labels": labels}}


def matches(selector: str, labels: dict[str, str]) -> bool:
    predicate = label_predicate(selector)
    assert predicate is not None
    return predicate({"metadata": {"labels": labels}})


# -- label selectors -----------------------------------------------------------------------


def test_parse_every_operator() -> None:
    parsed = parse_label_selector("a=1, b==2,c!=3, d in (x, y), e notin (z),f, !g, example.com/h=4")
    assert parsed == [
        Requirement("a", "=", frozenset({"1"})),
        Requirement("b", "=", frozenset({"2"})),
        Requirement("c", "!=", frozenset({"3"})),
        Requirement("d", "in", frozenset({"x", "y"})),
        Requirement("e", "notin", frozenset({"z"})),
        Requirement("f", "exists", frozenset()),
        Requirement("g", "!exists", frozenset()),
        Requirement("example.com/h", "=", frozenset({"4"})),
    ]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("env=prod", {"env": "prod"}, True),
        ("env=prod", {"env": "dev"}, False),
        ("env=prod", {}, False),
        ("env==prod", {"env": "prod"}, True),
        ("env==prod", {"env": "dev"}, False),
        ("env!=prod", {"env": "dev"}, True),
        ("env!=prod", {"env": "prod"}, False),
        ("env!=prod", {}, True),  # as in Kubernetes: a missing label is "not prod"
        ("env in (prod,staging)", {"env": "staging"}, True),
        ("env in (prod,staging)", {"env": "dev"}, False),
        ("env in (prod,staging)", {}, False),
        ("env notin (prod,staging)", {"env": "dev"}, True),
        ("env notin (prod,staging)", {"env": "prod"}, False),
        ("env notin (prod,staging)", {}, True),
        ("gpu", {"gpu": ""}, True),
        ("gpu", {"cpu": "1"}, False),
        ("!gpu", {"cpu": "1"}, True),
        ("!gpu", {"gpu": "a100"}, False),
        ("env=", {"env": ""}, True),
        ("env=", {"env": "x"}, False),
        ("example.com/tier=web", {"example.com/tier": "web"}, True),
    ],
)
def test_label_operators(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert matches(selector, labels) is expected


def test_commas_inside_parentheses_do_not_split_terms() -> None:
    selector = "env in (prod, staging),tier notin (db,cache),team"
    assert len(parse_label_selector(selector)) == 3
    assert matches(selector, {"env": "staging", "tier": "web", "team": "a"})
    assert not matches(selector, {"env": "staging", "tier": "cache", "team": "a"})
    assert not matches(selector, {"env": "staging", "tier": "web"})
    assert not matches(selector, {"env": "dev", "tier": "web", "team": "a"})


def test_all_terms_must_match() -> None:
    assert matches("a=1,b=2", {"a": "1", "b": "2", "c": "3"})
    assert not matches("a=1,b=2", {"a": "1", "b": "3"})


def test_empty_selector_selects_everything() -> None:
    assert label_predicate(None) is None
    assert label_predicate("") is None


def test_objects_without_labels() -> None:
    predicate = label_predicate("!a")
    assert predicate is not None
    assert predicate({"metadata": {}})
    assert predicate({"metadata": {"labels": None}})
    assert predicate({})
    positive = label_predicate("a")
    assert positive is not None
    assert not positive({"metadata": {}})


@pytest.mark.parametrize(
    "selector",
    [
        "=prod",  # no key
        "env in (a,b",  # unbalanced parenthesis
        "env in a,b",  # set without parentheses
        "bad key=1",  # space in a key
        "-env=1",  # key must start with a letter or digit
        "!=x",  # no key
        "!env=x",  # ! with a value
        "a/b/c=1",  # two slashes
        "Bad_Prefix.com/a=1",  # prefix must be a DNS subdomain
        f"{'k' * 64}=1",  # key name too long
        "env in (a) b",  # trailing garbage after a set
    ],
)
def test_bad_label_selector_is_bad_request(selector: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_label_selector(selector)
    assert caught.value.code == 400
    assert caught.value.details.get("field") == "labelSelector"


@pytest.mark.parametrize(
    "selector",
    [
        "env=a=b",  # '=' inside a value
        "env=a b",  # space inside a value
        "env in (a b)",  # space inside a set value
        f"env={'v' * 64}",  # value too long
    ],
)
def test_bad_label_value_is_bad_request(selector: str) -> None:
    """A value no label can have is a typo: say so rather than silently select nothing."""
    with pytest.raises(BadRequest):
        parse_label_selector(selector)


# hypothesis: a selector made of a dict's own pairs matches that dict

_name_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_alnum = st.text(_name_chars, min_size=1, max_size=1)
_inner = st.text(_name_chars + "-_.", max_size=20)
_label_name = st.one_of(_alnum, st.builds(lambda a, m, b: a + m + b, _alnum, _inner, _alnum))
_dns_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")
_prefix = st.lists(_dns_label, min_size=1, max_size=3).map(".".join)
_label_key = st.one_of(
    _label_name, st.builds(lambda p, n: f"{p}/{n}", _prefix, _label_name)
).filter(lambda k: len(k.rpartition("/")[2]) <= 63)
_label_value = st.one_of(st.just(""), _label_name).filter(lambda v: len(v) <= 63)
_labels = st.dictionaries(_label_key, _label_value, max_size=6)


def _different(value: str) -> str:
    """A valid label value other than value, of the same length (or "a" for "")."""
    if not value:
        return "a"
    return value[:-1] + ("b" if value[-1] == "a" else "a")


@given(labels=_labels, data=st.data())
def test_selector_from_own_pairs_matches(labels: dict[str, str], data: st.DataObject) -> None:
    terms = []
    for key, value in labels.items():
        forms = [f"{key}={value}", f"{key}=={value}", key]
        if value:
            forms += [f"{key} in ({value},other-value)", f"{key} notin ({_different(value)})"]
        forms.append(f"{key}!={_different(value)}")
        terms.append(data.draw(st.sampled_from(forms)))
    terms.append("!not.present/absent-key")
    selector = ",".join(data.draw(st.permutations(terms)))
    assert matches(selector, labels), selector


@given(labels=_labels.filter(bool), data=st.data())
def test_selector_with_one_wrong_value_does_not_match(
    labels: dict[str, str], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(labels)))
    others = [f"{k}={v}" for k, v in labels.items() if k != key]
    wrong = data.draw(
        st.sampled_from([f"{key}={_different(labels[key])}", f"{key}!={labels[key]}", f"!{key}"])
    )
    assert not matches(",".join([*others, wrong]), labels)


# -- field selectors -----------------------------------------------------------------------

VM: Obj = {
    "kind": "VirtualMachine",
    "metadata": {"name": "vm-1", "namespace": "default"},
    "spec": {"nodeName": "host-1", "cpu": 2, "ephemeral": True, "image": "a=b"},
    "status": {"phase": "Running"},
}
PENDING: Obj = {
    "kind": "VirtualMachine",
    "metadata": {"name": "vm-2", "namespace": "default"},
    "spec": {"cpu": 1, "ephemeral": False},
    "status": {"phase": "Pending"},
}


@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ("spec.nodeName=host-1", ["vm-1"]),
        ("spec.nodeName==host-1", ["vm-1"]),
        ("spec.nodeName!=host-1", ["vm-2"]),
        ("spec.nodeName=", ["vm-2"]),  # absent reads as ""
        ("spec.nodeName!=", ["vm-1"]),
        ("status.phase=Running,metadata.namespace=default", ["vm-1"]),
        ("metadata.name=vm-2", ["vm-2"]),
        ("spec.cpu=2", ["vm-1"]),
        ("spec.ephemeral=true", ["vm-1"]),
        ("spec.ephemeral=false", ["vm-2"]),
        ("spec.image=a=b", ["vm-1"]),  # only the first '=' separates
        ("spec.nodeName.deeper=x", []),
        ("status.phase=Running,status.phase=Pending", []),
    ],
)
def test_field_selector(selector: str, selected: list[str]) -> None:
    predicate = field_predicate(parse_field_selector(selector))
    assert predicate is not None
    assert [o["metadata"]["name"] for o in (VM, PENDING) if predicate(o)] == selected


def test_parse_field_selector() -> None:
    assert parse_field_selector(None) == []
    assert parse_field_selector("") == []
    assert field_predicate([]) is None
    assert parse_field_selector(" spec.nodeName = a , status.phase!=Failed") == [
        ("spec.nodeName", "=", "a"),
        ("status.phase", "!=", "Failed"),
    ]


@pytest.mark.parametrize(
    "selector",
    ["spec.nodeName", "=x", "spec..nodeName=x", "1spec=x", "spec.node-name=x", "spec.x in (a)"],
)
def test_bad_field_selector_is_bad_request(selector: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_field_selector(selector)
    assert caught.value.details.get("field") == "fieldSelector"


def test_lookup_renders_values_as_strings() -> None:
    assert lookup(VM, "spec.cpu") == "2"
    assert lookup(VM, "spec.ephemeral") == "true"
    assert lookup(PENDING, "spec.ephemeral") == "false"
    assert lookup(PENDING, "spec.nodeName") == ""
    assert lookup(VM, "spec.nodeName.x") == ""
    assert lookup(VM, "metadata.name") == "vm-1"
