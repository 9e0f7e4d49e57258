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
    # What discovery tells kubectl: short names (`kubectl get vm`) and categories
    # (`kubectl get shoal`: every kind; `kubectl get all`: the ones a team runs).
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ("shoal",)

    @property
    def singular(self) -> str:
        return self.kind.lower()


KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        "Namespace", "namespaces", False, kinds.Namespace, ("spec",), True, short_names=("ns",)
    ),
    KindInfo("Node", "nodes", False, kinds.Node, ("spec",), True),
    KindInfo(
        "VirtualMachine",
        "virtualmachines",
        True,
        kinds.VirtualMachine,
        ("spec",),
        True,
        immutable=("spec.image", "spec.nodeName", "spec.config", "spec.os", "spec.arch"),
        short_names=("vm", "vms"),
        categories=("shoal", "all"),
    ),
    KindInfo("VMConfig", "vmconfigs", True, kinds.VMConfig, ("spec",), False, short_names=("vmc",)),
    KindInfo(
        "Image",
        "images",
        False,
        kinds.Image,
        ("spec",),
        True,
        immutable=("spec.source",),
        short_names=("img",),
    ),
    KindInfo(
        "ImageCache", "imagecaches", False, kinds.ImageCache, ("spec",), True, short_names=("ic",)
    ),
    # type and data are top-level, as in Kubernetes; data is encrypted at rest (store.sealing).
    KindInfo("Secret", "secrets", True, kinds.Secret, ("type", "data"), False, immutable=("type",)),
    KindInfo(
        "RunnerPool",
        "runnerpools",
        True,
        RunnerPool,
        ("spec",),
        True,
        short_names=("rp",),
        categories=("shoal", "all"),
    ),
    KindInfo(
        "WarmPool",
        "warmpools",
        True,
        WarmPool,
        ("spec",),
        True,
        immutable=("spec.mode",),
        short_names=("wp",),
        categories=("shoal", "all"),
    ),
    KindInfo(
        "ServiceAccount",
        "serviceaccounts",
        True,
        kinds.ServiceAccount,
        ("spec",),
        True,
        short_names=("sa",),
    ),
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
        short_names=("ev",),
    ),
)

BY_KIND: dict[str, KindInfo] = {info.kind: info for info in KINDS}
BY_PLURAL: dict[str, KindInfo] = {info.plural: info for info in KINDS}
