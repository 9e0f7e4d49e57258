"""Parsing of flag values: durations, key=value pairs, label edits, ports, object references."""

import re

from shoal.cli.common import CliError

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# Kind aliases accepted by `--for KIND/NAME` and similar references.
KIND_ALIASES: dict[str, str] = {
    "vm": "VirtualMachine",
    "vms": "VirtualMachine",
    "virtualmachine": "VirtualMachine",
    "virtualmachines": "VirtualMachine",
    "node": "Node",
    "nodes": "Node",
    "no": "Node",
    "namespace": "Namespace",
    "namespaces": "Namespace",
    "ns": "Namespace",
    "vmconfig": "VMConfig",
    "vmconfigs": "VMConfig",
    "serviceaccount": "ServiceAccount",
    "serviceaccounts": "ServiceAccount",
    "sa": "ServiceAccount",
    "rolebinding": "RoleBinding",
    "rolebindings": "RoleBinding",
    "secret": "Secret",
    "secrets": "Secret",
    "runnerpool": "RunnerPool",
    "runnerpools": "RunnerPool",
    "warmpool": "WarmPool",
    "warmpools": "WarmPool",
    "imagecache": "ImageCache",
    "imagecaches": "ImageCache",
    "image": "Image",
    "images": "Image",
}


def parse_duration(text: str) -> int:
    """Seconds in "90", "30s", "30m", "1h", "2d", "1w" or a sum such as "1h30m"."""
    value = text.strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        parts = _DURATION_PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise CliError(
                f"{text!r} is not a duration: use seconds or a number with s, m, h, d or w "
                "(e.g. 30m, 1h, 2d)"
            )
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise CliError(f"duration {text!r} must be greater than zero")
    return seconds


def parse_pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    """{"k": "v"} from ["k=v", ...]; each entry may also hold several pairs separated by commas."""
    result: dict[str, str] = {}
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, val = item.partition("=")
            if not sep or not key.strip():
                raise CliError(f"{flag} {item!r}: expected key=value")
            result[key.strip()] = val.strip()
    return result


def parse_label_edits(values: list[str]) -> dict[str, str | None]:
    """Label changes as a merge patch: "k=v" sets k, "k-" removes it (a JSON null)."""
    edits: dict[str, str | None] = {}
    for item in values:
        if "=" in item:
            key, _, val = item.partition("=")
            if not key:
                raise CliError(f"label {item!r}: expected key=value or key-")
            edits[key] = val
        elif item.endswith("-") and len(item) > 1:
            edits[item[:-1]] = None
        else:
            raise CliError(f"label {item!r}: expected key=value to set or key- to remove")
    return edits


def parse_port(text: str) -> dict[str, int]:
    """A port mapping: "22" (guest port) or "2222:22" (node port : guest port)."""
    node, sep, guest = text.strip().rpartition(":")
    try:
        mapping = {"guest": int(guest)}
        if sep:
            mapping["node"] = int(node)
    except ValueError:
        raise CliError(
            f"port {text!r}: expected GUEST or NODEPORT:GUEST, e.g. 22 or 2222:22"
        ) from None
    return mapping


def parse_object_ref(text: str) -> tuple[str, str]:
    """("VirtualMachine", "x") from "vm/x"; the kind may be any alias in KIND_ALIASES."""
    kind, sep, name = text.partition("/")
    if not sep or not name:
        raise CliError(f"{text!r}: expected KIND/NAME, e.g. vm/build-1 or node/mac-1")
    canonical = KIND_ALIASES.get(kind.lower())
    if canonical is None:
        raise CliError(
            f"unknown kind {kind!r}: use one of vm, node, namespace, vmconfig, warmpool, "
            "runnerpool, image, imagecache, serviceaccount, rolebinding, secret"
        )
    return canonical, name


def parse_subject(text: str, current_namespace: str) -> dict[str, str]:
    """A ServiceAccount subject from "NS:NAME" or "NAME" (in the current namespace)."""
    namespace, sep, name = text.rpartition(":")
    if not name or (sep and not namespace):
        raise CliError(f"--serviceaccount {text!r}: expected NAMESPACE:NAME or NAME")
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace or current_namespace}
