"""OCI reference parsing: the host rule, defaults, errors, and a round-trip property."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.images.errors import InvalidReference
from shoal.images.reference import Reference, is_reference, parse
from shoal.model.meta import DNS_NAME

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu", Reference(None, "ubuntu", "latest")),
        ("library/ubuntu:22.04", Reference(None, "library/ubuntu", "22.04")),
        ("registry.example/vm/base", Reference("registry.example", "vm/base", "latest")),
        ("localhost/vm", Reference("localhost", "vm", "latest")),
        ("localhost:5000/vm:v1", Reference("localhost:5000", "vm", "v1")),
        ("127.0.0.1:5000/a/b/c:x", Reference("127.0.0.1:5000", "a/b/c", "x")),
        ("host:5000/vm@" + DIGEST, Reference("host:5000", "vm", None, DIGEST)),
        ("r.example/vm:v1@" + DIGEST, Reference("r.example", "vm", "v1", DIGEST)),
        ("[::1]:5000/vm:v1", Reference("[::1]:5000", "vm", "v1")),
        ("my-org/my_image__x.y", Reference(None, "my-org/my_image__x.y", "latest")),
        # a first component without '.', ':' or 'localhost' is part of the repository
        ("team/vm:v2", Reference(None, "team/vm", "v2")),
    ],
)
def test_parse(text: str, expected: Reference) -> None:
    assert parse(text) == expected


def test_properties() -> None:
    ref = parse("registry.example:5000/vm/base:v1")
    assert ref.name == "registry.example:5000/vm/base"
    assert ref.manifest_ref == "v1"
    assert ref.with_digest(DIGEST).manifest_ref == DIGEST
    assert str(ref.with_digest(DIGEST)) == f"registry.example:5000/vm/base:v1@{DIGEST}"
    assert ref.require_host() == "registry.example:5000"
    assert parse("vm").with_host("r.example").name == "r.example/vm"
    assert ref.with_host("other.example") == ref


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        (" vm", "padded"),
        ("Registry.example/VM", "lowercase"),
        ("r.example/vm:-bad", "tag"),
        ("r.example/vm:" + "x" * 129, "tag"),
        ("r.example/vm:v\u00e9", "tag"),
        ("r.example/vm@sha256:abc", "digest"),
        ("r.example/vm@md5:" + "a" * 32, "digest"),
        ("r.example/", "no repository"),
        ("r.example/a//b", "repository part"),
        ("bad_host.example:99999/vm", "host"),
        ("r.example/" + "a" * 300, "longer than"),
    ],
)
def test_rejects(text: str, complaint: str) -> None:
    with pytest.raises(InvalidReference, match=complaint):
        parse(text)


def test_no_host_is_the_callers_choice() -> None:
    with pytest.raises(InvalidReference, match="no registry host"):
        parse("team/vm:v1").require_host()


_alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=2),
)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?", fullmatch=True)
_host = st.one_of(
    st.builds(lambda labels: ".".join(labels), st.lists(_label, min_size=2, max_size=3)),
    st.just("localhost"),
).flatmap(
    lambda name: st.one_of(st.just(name), st.integers(1, 65535).map(lambda port: f"{name}:{port}"))
)
_tag = st.from_regex(r"\w[\w.-]{0,20}", fullmatch=True).filter(str.isascii)
_digest = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(
    lambda h: "sha256:" + h
)


@st.composite
def references(draw: st.DrawFn) -> Reference:
    host = draw(st.one_of(st.none(), _host))
    components = draw(st.lists(_component, min_size=1, max_size=3))
    if host is None and ("." in components[0] or components[0] == "localhost"):
        components[0] = "x" + components[0].replace(".", "x")
    digest = draw(st.one_of(st.none(), _digest))
    tag = draw(_tag) if digest is None else draw(st.one_of(st.none(), _tag))
    return Reference(host, "/".join(components), tag, digest)


@settings(deadline=None)
@given(references())
def test_round_trip(ref: Reference) -> None:
    assert parse(str(ref)) == ref
    assert str(parse(str(ref))) == str(ref)


@pytest.mark.parametrize(
    ("text", "reference"),
    [
        # a registry host, a tag or a digest makes an OCI reference ...
        ("ghcr.io/acme/ci", True),
        ("localhost/vm", True),
        ("localhost:5000/x:1", True),
        ("ubuntu:24.04", True),
        ("team/vm:v2", True),
        ("vm@" + DIGEST, True),
        # ... a bare name names an Image object; what does not parse is neither
        ("ubuntu", False),
        ("macos-15", False),
        ("images.example", False),
        ("team/vm", False),
        ("Ubuntu:1", False),
        ("x:not a tag", False),
        ("", False),
    ],
)
def test_is_reference(text: str, reference: bool) -> None:
    assert is_reference(text) is reference


@given(references())
def test_every_printed_reference_is_one(ref: Reference) -> None:
    assert is_reference(str(ref))  # references() always gives a tag or digest


@given(st.from_regex(DNS_NAME, fullmatch=True))
def test_no_image_name_is_a_reference(name: str) -> None:
    """The agent looks a DNS-name image up as an Image: admission must agree."""
    assert not is_reference(name)
