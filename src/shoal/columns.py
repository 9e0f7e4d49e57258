"""The columns of each kind's list: one definition for the CLI's tables (`shoal vm list`, with
`-o wide` the wide columns after them) and for the server's `meta.k8s.io/v1` Tables that
`kubectl get` prints.

Pure Python: no typer, rich or httpx, so the server can import it. A column is a header and a
getter; a getter takes an object as the API serves it (a dict) and returns the cell's text. It
never raises, whatever the object holds: a field of the wrong type reads as missing.
"""

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from shoal.quantity import describe_bytes, parse_bytes

Obj = dict[str, Any]
Getter = Callable[[Obj], str]
Column = tuple[str, Getter]

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


# -- values -------------------------------------------------------------------------------


def dig(obj: Any, path: str, default: Any = None) -> Any:
    """The value at a dotted path, or default when any step is missing."""
    value = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return default if value is None else value


def field(path: str, default: str = "") -> Getter:
    """A getter of the value at a dotted path as text; default when it is missing or empty."""

    def get(obj: Obj) -> str:
        value = dig(obj, path)
        return default if value is None or value == "" else str(value)

    return get


def _dict(value: Any) -> dict[str, Any]:
    """value when it is a dict, else an empty one (a missing or malformed field)."""
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The dicts in value when it is a list, else none."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _strs(value: Any) -> list[str]:
    """The items of value as text when it is a list, else none."""
    return [str(v) for v in value] if isinstance(value, list) else []


def _int(value: Any) -> int:
    """value as a whole number; 0 when it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def human_size(size: int) -> str:
    """Bytes for people: 1 decimal, binary units (22.0Mi)."""
    value = float(size)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{size}"


def human_duration(seconds: float) -> str:
    """kubectl-like: 5s, 3m, 2h, 4d (whole units, rounded down)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """How long ago timestamp was, e.g. "3m"; "<unknown>" when absent or unreadable."""
    if not timestamp or not isinstance(timestamp, str):
        return "<unknown>"
    try:
        then = parse_time(timestamp)
    except ValueError:
        return "<unknown>"
    return human_duration(((now or datetime.now(UTC)) - then).total_seconds())


def until(timestamp: str | None, now: datetime | None = None) -> str:
    """How long until timestamp, e.g. "in 59m"; "never" when absent, "expired" when past."""
    if not timestamp:
        return "never"
    if not isinstance(timestamp, str):
        return str(timestamp)
    try:
        then = parse_time(timestamp)
    except ValueError:
        return timestamp
    left = (then - (now or datetime.now(UTC))).total_seconds()
    return "expired" if left <= 0 else f"in {human_duration(left)}"


def created_age(obj: Obj) -> str:
    return age(dig(obj, "metadata.creationTimestamp"))


def labels_text(labels: Mapping[str, Any] | None) -> str:
    """key=value,... ("<none>" when there are none, or labels is not a mapping)."""
    if not isinstance(labels, Mapping):
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "<none>"


# -- columns every kind shares --------------------------------------------------------------

NAME_COLUMN: Column = ("NAME", field("metadata.name"))
AGE_COLUMN: Column = ("AGE", created_age)
# First when a list spans namespaces (-A), as kubectl puts it; see KindColumns.first.
NAMESPACE_COLUMN: Column = ("NAMESPACE", field("metadata.namespace"))


# -- VirtualMachine and VMConfig ------------------------------------------------------------


def vm_phase(vm: Obj) -> str:
    if dig(vm, "metadata.deletionTimestamp"):
        return "Terminating"
    return str(dig(vm, "status.phase", "Pending"))


def guest_ports(obj: Obj) -> str:
    """The guest ports a spec asks for: 22,80 ("<none>" when it asks for none)."""
    return ",".join(str(p.get("guest", "")) for p in _dicts(dig(obj, "spec.ports"))) or "<none>"


def vm_ports(vm: Obj) -> str:
    """The ports mapped to the host (address:host->guest), else the guest ports asked for."""
    mapped = _dicts(dig(vm, "status.ports"))
    if mapped:
        return ",".join(
            f"{p.get('address', '')}:{p.get('host', '')}->{p.get('guest', '')}" for p in mapped
        )
    return guest_ports(vm)


def node_selector(obj: Obj) -> str:
    return labels_text(dig(obj, "spec.nodeSelector"))


# -- Node -------------------------------------------------------------------------------------


class NodeUsage(Protocol):
    """What a node's VMs reserve: Usage here, or the store's own (shoal.store.store.Usage)."""

    @property
    def cpu(self) -> int: ...

    @property
    def memory(self) -> int: ...

    @property
    def vms(self) -> int: ...


@dataclass
class Usage:
    cpu: int = 0
    memory: int = 0
    vms: int = 0


def usage_by_node(vms: list[Obj]) -> dict[str, Usage]:
    """What the VMs bound to each node reserve (every bound VM holds its share until gone)."""
    usage: dict[str, Usage] = {}
    for vm in vms:
        spec = _dict(vm.get("spec"))
        node = spec.get("nodeName")
        if not node or not isinstance(node, str):
            continue
        used = usage.setdefault(node, Usage())
        used.cpu += _int(spec.get("cpu") or 0)
        memory = spec.get("memory") or 0
        if isinstance(memory, str | int):
            with contextlib.suppress(ValueError):
                used.memory += parse_bytes(memory)
        used.vms += 1
    return usage


def node_status(node: Obj) -> str:
    conditions = _dicts(dig(node, "status.conditions"))
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    text = "Ready" if ready is not None and ready.get("status") == "True" else "NotReady"
    if dig(node, "spec.unschedulable"):
        text += ",SchedulingDisabled"
    if dig(node, "metadata.deletionTimestamp"):
        text += ",Terminating"
    return text


def bytes_text(value: int) -> str:
    """A number of bytes as a quantity ("8Gi", "23.4Gi"); "0" for none."""
    return describe_bytes(value) if value else "0"


def _alloc_bytes(node: Obj, key: str) -> str:
    value = dig(node, f"status.allocatable.{key}", "0")
    if value in ("0", 0):
        return "0"
    if not isinstance(value, str | int):
        return str(value)
    try:
        return bytes_text(parse_bytes(value))
    except ValueError:
        return str(value)


def _text(path: str, default: str) -> Getter:
    """A getter of the value at path as text (default only when it is missing or null)."""
    return lambda obj: str(dig(obj, path, default))


def node_columns(usage: Mapping[str, NodeUsage] | None) -> "KindColumns":
    """Node columns, with what each node's VMs use (by node name; a node not in usage uses
    nothing) of its allocatable CPU and memory, or "?" when usage is None (not known)."""

    def used(node: Obj) -> NodeUsage | None:
        if usage is None:
            return None
        return usage.get(str(dig(node, "metadata.name", "")), Usage())

    def cpu(node: Obj) -> str:
        allocatable = dig(node, "status.allocatable.cpu", 0)
        use = used(node)
        return f"{use.cpu}/{allocatable}" if use else f"?/{allocatable}"

    def memory(node: Obj) -> str:
        allocatable = _alloc_bytes(node, "memory")
        use = used(node)
        return f"{bytes_text(use.memory)}/{allocatable}" if use else f"?/{allocatable}"

    def vms(node: Obj) -> str:
        use = used(node)
        return str(use.vms) if use else "?"

    return KindColumns(
        columns=(
            NAME_COLUMN,
            ("STATUS", node_status),
            ("BACKEND", _text("status.backend", "<unknown>")),
            ("ARCH", _text("status.arch", "<unknown>")),
            ("CPU", cpu),
            ("MEMORY", memory),
            ("VMS", vms),
            AGE_COLUMN,
        ),
        wide=(
            ("OS", _text("status.os", "")),
            ("ADDRESSES", lambda o: ",".join(_strs(dig(o, "status.addresses"))) or "<none>"),
            ("VERSION", _text("status.agentVersion", "")),
            ("HEARTBEAT", lambda o: age(dig(o, "status.lastHeartbeatTime"))),
            ("LABELS", lambda o: labels_text(dig(o, "metadata.labels"))),
        ),
    )


# -- Image and ImageCache ---------------------------------------------------------------------


def image_source(obj: Obj) -> str:
    source = _dict(dig(obj, "spec.source"))
    if source.get("oci"):
        return str(source["oci"])
    local = _dict(source.get("local"))
    return str(_dict(local.get("disk")).get("path", "<none>"))


def image_size(obj: Obj) -> str:
    local = _dict(dig(obj, "spec.source.local"))
    size = sum(_int(entry.get("size") or 0) for entry in local.values() if isinstance(entry, dict))
    return human_size(size) if size else "<unknown>"


def imagecache_targets(obj: Obj) -> str:
    spec = _dict(obj.get("spec"))
    if spec.get("allNodes"):
        return "all nodes"
    if spec.get("nodes"):
        return ",".join(_strs(spec["nodes"]))
    return ",".join(f"{k}={v}" for k, v in _dict(spec.get("nodeSelector")).items())


def imagecache_ready(obj: Obj) -> str:
    status = _dict(obj.get("status"))
    return f"{status.get('ready', 0)}/{status.get('desired', 0)}"


# -- Secret -----------------------------------------------------------------------------------


def secret_keys(obj: Obj) -> str:
    """The names of a Secret's values, never the values."""
    return ",".join(sorted(str(k) for k in _dict(obj.get("data")))) or "<none>"


# -- RunnerPool -------------------------------------------------------------------------------

RUNNER_STATES = ("starting", "idle", "busy", "finishing")


def runnerpool_target(obj: Obj) -> str:
    """The CI system and the queue it serves, e.g. "github acme [macos,xcode-16]"."""
    spec = _dict(obj.get("spec"))
    provider = spec.get("provider", "")
    target = _dict(spec.get(provider)) if isinstance(provider, str) else {}
    if provider == "github":
        where = target.get("organization") or target.get("repository") or ""
        return f"github {where} [{','.join(_strs(target.get('labels')))}]"
    if provider == "jenkins":
        return f"jenkins {target.get('url', '')} [{target.get('label', '')}]"
    if provider == "buildkite":
        return f"buildkite {target.get('organization', '')} queue={target.get('queue', '')}"
    return str(provider)


def runnerpool_runners(obj: Obj) -> str:
    """Live runners / maxRunners."""
    counts = _dict(_dict(obj.get("status")).get("runners"))
    live = sum(_int(counts.get(k, 0)) for k in RUNNER_STATES)
    return f"{live}/{_dict(obj.get('spec')).get('maxRunners', 0)}"


def runnerpool_states(obj: Obj) -> str:
    """Runners in each state: starting=1 idle=2 busy=0 finishing=0."""
    counts = _dict(_dict(obj.get("status")).get("runners"))
    return " ".join(f"{k}={counts.get(k, 0)}" for k in RUNNER_STATES)


def runnerpool_synced(obj: Obj) -> str:
    """True, the reason it is not synced, or "-" before the first sync."""
    conditions = _dicts(_dict(obj.get("status")).get("conditions"))
    synced = next((c for c in conditions if c.get("type") == "Synced"), None)
    if synced is None:
        return "-"
    return "True" if synced.get("status") == "True" else str(synced.get("reason") or "False")


# -- WarmPool ---------------------------------------------------------------------------------


def warmpool_ready(obj: Obj) -> str:
    return f"{dig(obj, 'status.ready', 0)}/{dig(obj, 'spec.size', 0)}"


def seconds(path: str) -> Getter:
    """A getter of a number of seconds at path: "60s", or "-" when unset."""

    def get(obj: Obj) -> str:
        value = dig(obj, path)
        return "-" if value is None else f"{value}s"

    return get


def warmpool_last_discard(obj: Obj) -> str:
    reason = dig(obj, "status.lastDiscardReason")
    if not reason:
        return "-"
    when = dig(obj, "status.lastDiscardTime")
    return f"{reason} ({age(when)} ago)" if when else str(reason)


# -- ServiceAccount and RoleBinding -----------------------------------------------------------


def serviceaccount_tokens(obj: Obj) -> str:
    tokens = dig(obj, "status.tokens", [])
    return str(len(tokens) if isinstance(tokens, list) else 0)


def subject_text(subject: Obj) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f"serviceaccount:{subject.get('namespace') or ''}:{subject.get('name')}"
    return f"{str(subject.get('kind', '')).lower()}:{subject.get('name')}"


def subjects_text(obj: Obj) -> str:
    return ",".join(subject_text(s) for s in _dicts(obj.get("subjects")))


# -- Event ------------------------------------------------------------------------------------


def event_last_seen(event: Obj) -> str:
    return age(event.get("lastTimestamp") or event.get("firstTimestamp"))


def event_object(event: Obj) -> str:
    """The object it is about, as kind/name (kind in lower case)."""
    involved = _dict(event.get("involvedObject"))
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


def event_source(event: Obj) -> str:
    return str(event.get("source", ""))


# -- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KindColumns:
    """A kind's list columns: columns always, then wide ones with -o wide."""

    columns: tuple[Column, ...]
    wide: tuple[Column, ...] = ()
    # NAMESPACE goes first in lists across namespaces (-A); with this, in every -o wide list
    # too (VirtualMachines: `shoal vm list -o wide` shows it in one namespace as well).
    namespace_when_wide: bool = False

    def first(self, *, all_namespaces: bool, wide: bool = False) -> tuple[Column, ...]:
        """The columns before .columns: NAMESPACE in a list across namespaces."""
        if all_namespaces or (wide and self.namespace_when_wide):
            return (NAMESPACE_COLUMN,)
        return ()

    def chosen(self, *, all_namespaces: bool = False, wide: bool = False) -> tuple[Column, ...]:
        """Every column of a list, in order, as the CLI prints it."""
        first = self.first(all_namespaces=all_namespaces, wide=wide)
        return (*first, *self.columns, *(self.wide if wide else ()))


TABLES: dict[str, KindColumns] = {
    "VirtualMachine": KindColumns(
        columns=(
            NAME_COLUMN,
            ("PHASE", vm_phase),
            ("NODE", field("spec.nodeName", "<none>")),
            ("IMAGE", field("spec.image")),
            ("CPU", field("spec.cpu")),
            ("MEMORY", field("spec.memory")),
            AGE_COLUMN,
        ),
        wide=(
            ("DISK", field("spec.disk")),
            ("PORTS", vm_ports),
            ("MESSAGE", field("status.message")),
        ),
        namespace_when_wide=True,
    ),
    # What the VMs on each node use is not in the Node: "?" here; node_columns(usage) has it.
    "Node": node_columns(None),
    "VMConfig": KindColumns(
        columns=(
            NAME_COLUMN,
            ("IMAGE", field("spec.image")),
            ("CPU", field("spec.cpu")),
            ("MEMORY", field("spec.memory")),
            ("DISK", field("spec.disk")),
            ("OS", field("spec.os")),
            AGE_COLUMN,
        ),
        wide=(
            ("ARCH", field("spec.arch")),
            ("PORTS", guest_ports),
            ("SELECTOR", node_selector),
        ),
    ),
    "Image": KindColumns(
        columns=(
            NAME_COLUMN,
            ("OS", field("spec.os")),
            ("ARCH", field("spec.arch")),
            ("BOOT", field("spec.boot")),
            ("SIZE", image_size),
            AGE_COLUMN,
        ),
        wide=(("SOURCE", image_source), ("SSH USER", field("spec.sshUser"))),
    ),
    "ImageCache": KindColumns(
        columns=(
            NAME_COLUMN,
            ("IMAGE", field("spec.image")),
            ("NODES", imagecache_targets),
            ("READY", imagecache_ready),
            ("FAILED", field("status.failed")),
            AGE_COLUMN,
        ),
    ),
    "Secret": KindColumns(
        columns=(NAME_COLUMN, ("TYPE", field("type")), ("KEYS", secret_keys), AGE_COLUMN),
    ),
    "RunnerPool": KindColumns(
        columns=(
            NAME_COLUMN,
            ("CI", runnerpool_target),
            ("RUNNERS", runnerpool_runners),
            ("WAITING", field("status.jobsWaiting", "0")),
            ("SYNCED", runnerpool_synced),
            AGE_COLUMN,
        ),
        wide=(("STATES", runnerpool_states), ("MESSAGE", field("status.message"))),
    ),
    "WarmPool": KindColumns(
        columns=(
            NAME_COLUMN,
            ("CONFIG", field("spec.config")),
            ("MODE", field("spec.mode", "suspended")),
            ("READY", warmpool_ready),
            ("REFILLING", field("status.refilling", "0")),
            ("CLAIMING", field("status.claiming", "0")),
            AGE_COLUMN,
        ),
        wide=(
            ("NODE-SELECTOR", node_selector),
            ("MAX-IDLE", seconds("spec.maxIdleSeconds")),
            ("MAX-AGE", seconds("spec.maxAgeSeconds")),
            ("LAST-DISCARD", warmpool_last_discard),
        ),
    ),
    "ServiceAccount": KindColumns(
        columns=(NAME_COLUMN, ("TOKENS", serviceaccount_tokens), AGE_COLUMN),
        wide=(("DESCRIPTION", field("spec.description")),),
    ),
    "RoleBinding": KindColumns(
        columns=(
            NAME_COLUMN,
            ("ROLE", field("roleRef.name")),
            ("SUBJECTS", subjects_text),
            AGE_COLUMN,
        ),
    ),
    "Namespace": KindColumns(
        columns=(NAME_COLUMN, ("STATUS", field("status.phase", "Active")), AGE_COLUMN),
        wide=(("LABELS", lambda o: labels_text(dig(o, "metadata.labels"))),),
    ),
    # As kubectl's events: no NAME column (an Event's name says nothing); oldest first.
    "Event": KindColumns(
        columns=(
            ("LAST SEEN", event_last_seen),
            ("TYPE", field("type", "Normal")),
            ("REASON", field("reason")),
            ("OBJECT", event_object),
            ("COUNT", field("count", "1")),
            ("MESSAGE", field("message")),
        ),
        wide=(("SOURCE", event_source),),
    ),
}

# Not a kind: `shoal node join-token list` (the server's /jointokens answer).
JOIN_TOKEN_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda t: str(t.get("id", ""))),
    ("CREATED", lambda t: age(t.get("createdAt"))),
    ("EXPIRES", lambda t: until(t.get("expiresAt"))),
)
