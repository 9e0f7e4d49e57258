"""The protobuf kubectl sends for `kubectl auth can-i`, read back (built here with a small
encoder of the same wire format)."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.api.kube.protobuf import MAGIC, ProtobufError, access_review_spec, fields, unwrap


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def review(**attributes: str) -> bytes:
    order = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
    resource = b"".join(
        field(i, attributes[name].encode()) for i, name in enumerate(order, 1) if name in attributes
    )
    raw = field(1, b"") + field(2, field(1, resource))
    type_meta = field(1, b"authorization.k8s.io/v1") + field(2, b"SelfSubjectAccessReview")
    return (
        MAGIC
        + field(1, type_meta)
        + field(2, raw)
        + field(4, b"application/vnd.kubernetes.protobuf")
    )


def test_a_can_i_review_reads_back() -> None:
    body = review(namespace="ci", verb="delete", group="shoal.dev", resource="virtualmachines")
    version, kind, raw = unwrap(body)
    assert (version, kind) == ("authorization.k8s.io/v1", "SelfSubjectAccessReview")
    assert access_review_spec(raw) == {
        "resourceAttributes": {
            "namespace": "ci", "verb": "delete", "group": "shoal.dev", "resource": "virtualmachines"
        }
    }  # fmt: skip


def test_what_is_not_protobuf_is_refused() -> None:
    with pytest.raises(ProtobufError):
        unwrap(b'{"kind": "SelfSubjectAccessReview"}')
    with pytest.raises(ProtobufError):
        fields(field(1, b"abc")[:-1])  # cut short


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protobuf_error(data: bytes) -> None:
    with contextlib.suppress(ProtobufError):
        _version, _kind, raw = unwrap(MAGIC + data)
        access_review_spec(raw)
