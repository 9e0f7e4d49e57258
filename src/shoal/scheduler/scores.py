"""Scores: among the nodes that pass every filter, which is best for this VM.

Each score is normalized to 0..1 and weighted so that they order as the design says: a node
that already caches the image wins first, then one with the preferred (soft) tags, then the
profile, pack (most allocated after placing: fill hosts, keep others empty) or spread (least
allocated).
"""

from typing import Any

from shoal.scheduler.placement import Allocatable, Request
from shoal.store.store import Usage

Obj = dict[str, Any]
WEIGHTS = {"image": 100.0, "preferred": 10.0, "profile": 1.0}
PROFILES = ("pack", "spread")


def image_cached(node: Obj, request: Request) -> float:
    cached = (node.get("status") or {}).get("cachedImages") or []
    return 1.0 if request.image and request.image in cached else 0.0


def preferred_tags(node: Obj, request: Request) -> float:
    if not request.preferred:
        return 0.0
    labels = node["metadata"].get("labels") or {}
    matched: int = sum(labels.get(k) == v for k, v in request.preferred)
    return matched / len(request.preferred)


def allocation_after(alloc: Allocatable, usage: Usage, request: Request) -> float:
    """How full the node would be with the VM on it: the mean of its cpu and memory shares."""
    shares = []
    if alloc.cpu:
        shares.append((usage.cpu + request.cpu) / alloc.cpu)
    if alloc.memory:
        shares.append((usage.memory + request.memory) / alloc.memory)
    return min(1.0, sum(shares) / len(shares)) if shares else 1.0


def profile_score(alloc: Allocatable, usage: Usage, request: Request, profile: str) -> float:
    full = allocation_after(alloc, usage, request)
    return full if profile == "pack" else 1.0 - full


def score(
    node: Obj,
    usage: Usage,
    request: Request,
    default_profile: str = "pack",
    allocatable: Allocatable | None = None,
) -> float:
    profile = request.profile or default_profile
    alloc = allocatable or Allocatable.of(node)
    return (
        WEIGHTS["image"] * image_cached(node, request)
        + WEIGHTS["preferred"] * preferred_tags(node, request)
        + WEIGHTS["profile"] * profile_score(alloc, usage, request, profile)
    )
