"""Object metadata, conditions and the validation rules every kind shares."""

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

API_VERSION = "shoal.dev/v1"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def check_dns_label(value: str) -> str:
    if len(value) > 63:
        raise ValueError("must be at most 63 characters")
    if not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS label: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if prefix and (
        len(prefix) > 253 or not all(_DNS_LABEL.match(part) for part in prefix.split("."))
    ):
        raise ValueError(f"label key {key!r} has an invalid prefix")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(
            f"label key {key!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "optionally after a DNS prefix and '/'"
        )
    return key


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        if len(value) > 63 or not LABEL_VALUE.match(value):
            raise ValueError(
                f"label {key!r} has value {value!r}: at most 63 letters, digits, '-', '_' or '.'"
            )
    return labels


def _check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    for key in annotations:
        check_label_key(key)
    if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
        raise ValueError("annotations are larger than 256 KiB in all")
    return annotations


DNSLabel = Annotated[str, AfterValidator(check_dns_label)]
# What an object name may be (an Image's, say); anything else a VM names as its image is an OCI
# reference.
DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


class StrictModel(BaseModel):
    """Every model rejects unknown fields, so a typo is an error and not a silent default.

    A string right under a field is its description (use_attribute_docstrings): it reaches the
    JSON schema, and so `kubectl explain` (shoal.api.kube.openapi)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)


class ObjectMeta(StrictModel):
    name: DNSLabel | None = None
    generateName: (
        Annotated[str, Field(max_length=58, pattern=r"^[a-z0-9]([-a-z0-9]*)?$")] | None
    ) = None
    namespace: DNSLabel | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: Annotated[dict[str, str], AfterValidator(_check_annotations)] = Field(
        default_factory=dict
    )
    finalizers: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StrictModel):
    """One aspect of an object's state, as in Kubernetes: whether it holds (True, False or
    Unknown), why, and since when."""

    type: Annotated[str, Field(min_length=1, max_length=63)]
    """What the condition is about, in CamelCase: Ready, Scheduled, StartupScript, Synced..."""
    status: ConditionStatus
    """Whether the condition holds: True, False or Unknown."""
    reason: Annotated[str, Field(max_length=128)] = ""
    """Why the condition is in its status, as one CamelCase word a program can match."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Why the condition is in its status, in words for a person."""
    lastTransitionTime: str | None = None
    """When the status last changed (RFC 3339, UTC)."""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def set_condition(
    conditions: list[dict[str, str]], type_: str, status: str, reason: str = "", message: str = ""
) -> bool:
    """Set a condition in a status's conditions list; return whether anything changed."""
    for condition in conditions:
        if condition.get("type") == type_:
            if (condition.get("status"), condition.get("reason"), condition.get("message")) == (
                status,
                reason,
                message,
            ):
                return False
            if condition.get("status") != status:
                condition["lastTransitionTime"] = now_iso()
            condition.update(status=status, reason=reason, message=message)
            return True
    conditions.append(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_iso(),
        }
    )
    return True


def get_condition(obj: dict[str, object], type_: str) -> dict[str, str] | None:
    status = obj.get("status") or {}
    assert isinstance(status, dict)
    for condition in status.get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None
