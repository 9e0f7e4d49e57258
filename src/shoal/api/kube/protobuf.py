"""The little of Kubernetes' protobuf encoding shoal reads: kubectl sends some built-in kinds
(a SelfSubjectAccessReview for `kubectl auth can-i`) only as protobuf, and takes JSON back.

A body is the magic `k8s\\0`, then a `runtime.Unknown` message (1: typeMeta, 2: raw, ...) whose
raw bytes are the object's own message. Only varints and length-delimited fields occur in the
messages read here; other wire types end the decoding with an error.
"""

MAGIC = b"k8s\x00"

Fields = dict[int, list[bytes | int]]


class ProtobufError(ValueError):
    pass


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ProtobufError("a varint runs past the end of the message")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields(data: bytes) -> Fields:
    """A message's fields by number (repeated ones in order)."""
    found: Fields = {}
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, at = _varint(data, at)
            found.setdefault(number, []).append(value)
        elif wire_type == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ProtobufError("a field runs past the end of the message")
            found.setdefault(number, []).append(data[at : at + length])
            at += length
        else:
            raise ProtobufError(f"wire type {wire_type} is not read here")
    return found


def message(found: Fields, number: int) -> Fields:
    values = found.get(number) or [b""]
    value = values[-1]
    return fields(value) if isinstance(value, bytes) else {}


def text(found: Fields, number: int) -> str:
    values = found.get(number) or [b""]
    value = values[-1]
    if not isinstance(value, bytes):
        return ""
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtobufError(f"field {number} is not UTF-8 text") from None


def unwrap(body: bytes) -> tuple[str, str, bytes]:
    """(apiVersion, kind, the object's message) of a Kubernetes protobuf body."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (no k8s magic)")
    unknown = fields(body[len(MAGIC) :])
    type_meta = message(unknown, 1)
    raw = (unknown.get(2) or [b""])[-1]
    return text(type_meta, 1), text(type_meta, 2), raw if isinstance(raw, bytes) else b""


RESOURCE_ATTRIBUTES = ("namespace", "verb", "group", "version", "resource", "subresource", "name")


def access_review_spec(raw: bytes) -> dict[str, object]:
    """The spec of a SelfSubjectAccessReview message (1: metadata, 2: spec; the spec's 1:
    resourceAttributes, 2: nonResourceAttributes), as its JSON form."""
    spec = message(fields(raw), 2)
    spec_json: dict[str, object] = {}
    if 1 in spec:
        attributes = message(spec, 1)
        spec_json["resourceAttributes"] = {
            name: text(attributes, number)
            for number, name in enumerate(RESOURCE_ATTRIBUTES, start=1)
            if number in attributes
        }
    if 2 in spec:
        non_resource = message(spec, 2)
        spec_json["nonResourceAttributes"] = {
            "path": text(non_resource, 1),
            "verb": text(non_resource, 2),
        }
    return spec_json
