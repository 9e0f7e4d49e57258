"""Parsing of CLI flag values: durations, key=value pairs, label edits, ports, references."""

import pytest

from shoal.cli.common import CliError
from shoal.cli.parse import (
    parse_duration,
    parse_label_edits,
    parse_object_ref,
    parse_pairs,
    parse_port,
    parse_subject,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("30m", 1800),
        ("1h", 3600),
        ("2d", 172800),
        ("1w", 604800),
        ("1h30m", 5400),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "1.5h", "-5", "0", "0m", "1h 30m", "m30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(CliError):
        parse_duration(text)


def test_pairs() -> None:
    assert parse_pairs(["a=1", "b=2,c=", "d=x=y"], "--label") == {
        "a": "1",
        "b": "2",
        "c": "",
        "d": "x=y",
    }
    assert parse_pairs(None, "--label") == {}
    with pytest.raises(CliError, match="--selector 'nokey'"):
        parse_pairs(["nokey"], "--selector")
    with pytest.raises(CliError):
        parse_pairs(["=v"], "--label")


def test_label_edits() -> None:
    assert parse_label_edits(["xcode=16", "gpu-", "empty="]) == {
        "xcode": "16",
        "gpu": None,
        "empty": "",
    }
    for bad in ["plain", "-", "=v"]:
        with pytest.raises(CliError):
            parse_label_edits([bad])


def test_ports() -> None:
    assert parse_port("22") == {"guest": 22}
    assert parse_port("2222:22") == {"guest": 22, "node": 2222}
    with pytest.raises(CliError):
        parse_port("ssh")


def test_object_refs() -> None:
    assert parse_object_ref("vm/build-1") == ("VirtualMachine", "build-1")
    assert parse_object_ref("virtualmachine/x") == ("VirtualMachine", "x")
    assert parse_object_ref("node/mac-1") == ("Node", "mac-1")
    assert parse_object_ref("Namespace/team-a") == ("Namespace", "team-a")
    for bad in ["vm", "vm/", "pod/x"]:
        with pytest.raises(CliError):
            parse_object_ref(bad)


def test_subjects() -> None:
    assert parse_subject("ci", "team-a") == {
        "kind": "ServiceAccount",
        "name": "ci",
        "namespace": "team-a",
    }
    assert parse_subject("other:bot", "team-a")["namespace"] == "other"
    with pytest.raises(CliError):
        parse_subject(":bot", "team-a")
