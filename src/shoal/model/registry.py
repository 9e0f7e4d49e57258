"""Which kinds exist, how they are addressed, and which of their fields a client may change."""

from dataclasses import dataclass

from pydantic import BaseModel

from shoal.model import kinds
from shoal.model.runnerpool import RunnerPool
from shoal.model.warmpool import WarmPool


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    namespaced: bool
    model: type[BaseModel]
    # Top-level fields a client writes; a change to any of them bumps metadata.generation.
    spec_fields: tuple[str, ...]
    has_status: bool
    # Dotted paths that cannot change once they hold a value.
    immutable: tuple[str, ...] = ()


KINDS: tuple[KindInfo, ...] = (
    KindInfo("Namespace", "namespaces", False, kinds.Namespace, ("spec",), True),
    KindInfo("Node", "nodes", False, kinds.Node, ("spec",), True),
    KindInfo(
        "VirtualMachine",
        "virtualmachines",
        True,
        kinds.VirtualMachine,
        ("spec",),
        True,
        immutable=("spec.image", "spec.nodeName", "spec.config", "spec.os", "spec.arch"),
    ),
    KindInfo("VMConfig", "vmconfigs", True, kinds.VMConfig, ("spec",), False),
    KindInfo("Image", "images", False, kinds.Image, ("spec",), True, immutable=("spec.source",)),
    KindInfo("ImageCache", "imagecaches", False, kinds.ImageCache, ("spec",), True),
    # type and data are top-level, as in Kubernetes; data is encrypted at rest (store.sealing).
    KindInfo("Secret", "secrets", True, kinds.Secret, ("type", "data"), False, immutable=("type",)),
    KindInfo("RunnerPool", "runnerpools", True, RunnerPool, ("spec",), True),
    KindInfo("WarmPool", "warmpools", True, WarmPool, ("spec",), True, immutable=("spec.mode",)),
    KindInfo("ServiceAccount", "serviceaccounts", True, kinds.ServiceAccount, ("spec",), True),
    KindInfo(
        "RoleBinding", "rolebindings", True, kinds.RoleBinding, ("roleRef", "subjects"), False
    ),
    KindInfo(
        "Event",
        "events",
        True,
        kinds.Event,
        (
            "involvedObject",
            "reason",
            "message",
            "type",
            "count",
            "firstTimestamp",
            "lastTimestamp",
            "source",
        ),
        False,
    ),
)

BY_KIND: dict[str, KindInfo] = {info.kind: info for info in KINDS}
BY_PLURAL: dict[str, KindInfo] = {info.plural: info for info in KINDS}
