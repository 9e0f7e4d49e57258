"""What a warm-pool entry is, as pure functions over store objects.

An entry is a VirtualMachine labelled with its pool, made from the pool's VMConfig with nothing
of a job in it (no startup script, no lease, no ttl). Its agent boots it, saves it once the
guest answers (condition Saved=True, phase Saved) and keeps the saved state on the node. From
then on it reserves disk but no cpu, memory or VM slot (store._index_columns). A suspended-mode
entry is consumed by the one VM that claims it; a clone-mode entry (a golden) stays, and every
VM on its node may start from it.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from shoal.model.meta import DNS_NAME, get_condition, parse_iso
from shoal.model.warmpool import POOL_LABEL, SAVED_CONDITION, is_saved

Obj = dict[str, Any]

# On an entry: the hash of what it was made from (pool, config, image); a change discards it.
TEMPLATE_ANNOTATION = "warmpools.shoal.dev/template"
# On an entry: the mode it was made for (a golden is made with shared, file-backed memory).
MODE_ANNOTATION = "warmpools.shoal.dev/mode"
# On a consumed entry: the uid of the VM it went to (its node keeps the files for that VM).
CLAIMED_BY_ANNOTATION = "warmpools.shoal.dev/claimed-by"
# On a VM deployed from a pooled VMConfig: the pool, and the uid of the entry it resumes (none
# when it booted cold). Its agent gives such a VM a fresh identity once its guest answers.
CLAIM_POOL_ANNOTATION = "warmpools.shoal.dev/claimed-from"
CLAIM_ENTRY_ANNOTATION = "warmpools.shoal.dev/entry"
SAVED_PHASE = "Saved"
# The condition of a VM's fresh identity (shoal.agent.identity); dropped when it is placed again.
IDENTITY_CONDITION = "FreshIdentity"
# Set by shoal only: a client may not set or change them (one could point a VM at another's entry).
SCHEDULER_ANNOTATIONS = (CLAIM_POOL_ANNOTATION, CLAIM_ENTRY_ANNOTATION, CLAIMED_BY_ANNOTATION)
METADATA_PREFIX = "warmpools.shoal.dev/"
# The VM fields that shape the saved machine: an entry serves a VM only when they are equal.
SHAPE_FIELDS = ("image", "cpu", "memory", "disk", "os", "arch")
# The VMConfig fields an entry takes (the rest belong to the job: script, env, access, lease).
ENTRY_FIELDS = (*SHAPE_FIELDS, "nodeSelector", "preferredNodeSelector", "schedulingProfile")
# Entries wait behind every VM of a job for a place on a node.
ENTRY_PRIORITY = -1000000


def pool_of(vm: Obj) -> str | None:
    """The pool a VM is an entry of; None for any other VM."""
    return (vm["metadata"].get("labels") or {}).get(POOL_LABEL)


def saved_at(vm: Obj) -> float | None:
    condition = get_condition(vm, SAVED_CONDITION)
    if condition is None or condition.get("status") != "True":
        return None
    stamp = condition.get("lastTransitionTime")
    return parse_iso(stamp).timestamp() if stamp else None


def is_clone_golden(vm: Obj) -> bool:
    return (vm["metadata"].get("annotations") or {}).get(MODE_ANNOTATION) == "clone"


def claimable(vm: Obj) -> bool:
    """A saved entry nobody took, on a node, and not being deleted."""
    meta = vm["metadata"]
    return (
        is_saved(vm)
        and bool(vm["spec"].get("nodeName"))
        and not meta.get("deletionTimestamp")
        and (vm.get("status") or {}).get("phase") == SAVED_PHASE
    )


def shape(spec: Obj) -> tuple[Any, ...]:
    return tuple(json.dumps(spec.get(field), sort_keys=True) for field in SHAPE_FIELDS)


def entry_spec(pool: Obj, config: Obj) -> Obj:
    """The spec of a new entry of pool, from its VMConfig."""
    source = config["spec"]
    spec: Obj = {field: source[field] for field in ENTRY_FIELDS if source.get(field) is not None}
    spec["nodeSelector"] = {**(source.get("nodeSelector") or {}), **pool["spec"]["nodeSelector"]}
    spec["priority"] = ENTRY_PRIORITY
    return spec


def template_hash(pool: Obj, config: Obj, image: Obj | None) -> str:
    """What an entry is made from, hashed: the entry spec, the pool's mode, and the Image's
    identity (an Image deleted and made again under the same name is another image)."""
    identity = {
        "spec": entry_spec(pool, config),
        "mode": pool["spec"].get("mode") or "suspended",
        "image": image["metadata"]["uid"] if image is not None else None,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def image_name(config: Obj) -> str | None:
    """The Image object a VMConfig names (None for an OCI reference)."""
    image = str(config["spec"].get("image") or "")
    return image if DNS_NAME.fullmatch(image) else None


@dataclass(frozen=True)
class EntryView:
    """One entry as the pool loop sees it."""

    name: str
    uid: str
    node: str | None
    state: str  # refilling, ready, claiming, failed, deleting
    created: float
    saved: float | None
    template: str
    message: str


def view(vm: Obj) -> EntryView:
    meta = vm["metadata"]
    status = vm.get("status") or {}
    phase = status.get("phase")
    annotations = meta.get("annotations") or {}
    if meta.get("deletionTimestamp"):
        state = "claiming" if CLAIMED_BY_ANNOTATION in annotations else "deleting"
    elif phase == "Failed":
        state = "failed"
    elif claimable(vm):
        state = "ready"
    else:
        state = "refilling"
    return EntryView(
        name=meta["name"],
        uid=meta["uid"],
        node=vm["spec"].get("nodeName"),
        state=state,
        created=parse_iso(meta["creationTimestamp"]).timestamp(),
        saved=saved_at(vm),
        template=annotations.get(TEMPLATE_ANNOTATION, ""),
        message=str(status.get("message") or ""),
    )


@dataclass(frozen=True)
class Plan:
    make: int  # new entries to create
    discard: tuple[tuple[str, str], ...]  # (entry name, why)


def plan(
    spec: Obj, template: str | None, entries: list[EntryView], now: float | None = None
) -> Plan:
    """Which entries go, and how many to make, so that `size` live entries of the current
    template are kept. Entries being deleted (discarded, or consumed by a claim) count for
    nothing; failed, stale and aged ones go; extra ones go, those still booting first. A None
    template (not known now) judges no entry stale."""
    now = time.time() if now is None else now
    discard: list[tuple[str, str]] = []
    live: list[EntryView] = []
    max_idle, max_age = spec.get("maxIdleSeconds"), spec.get("maxAgeSeconds")
    for entry in entries:
        if entry.state in ("claiming", "deleting"):
            continue
        if entry.state == "failed":
            discard.append((entry.name, f"it failed: {entry.message or 'no reason given'}"))
        elif template is not None and entry.template != template:
            discard.append((entry.name, "the pool, its VMConfig or its image changed"))
        elif max_age is not None and now - entry.created > max_age:
            discard.append((entry.name, f"older than maxAgeSeconds ({max_age})"))
        elif max_idle is not None and entry.saved is not None and now - entry.saved > max_idle:
            discard.append((entry.name, f"not claimed within maxIdleSeconds ({max_idle})"))
        else:
            live.append(entry)
    size = int(spec.get("size") or 0)
    if len(live) > size:
        # Keep the ready ones first, then the oldest (closest to ready).
        live.sort(key=lambda e: (e.state != "ready", e.created))
        discard.extend((entry.name, f"more than size ({size})") for entry in live[size:])
        live = live[:size]
    return Plan(make=size - len(live), discard=tuple(discard))
