"""Which authorization answers need no store read (lists served on the event loop rely on it):
wherever may_without_store says yes, authorize() agrees without touching the store."""

from typing import Any

import pytest

from shoal.api.auth import READ, WRITE, Principal, authorize, may_without_store
from shoal.errors import Forbidden
from shoal.model.registry import KINDS


class NoStore:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was read ({name})")


PRINCIPALS = [
    Principal("User", "", "admin"),
    Principal("User", "", "someone"),
    Principal("ServiceAccount", "team-a", "ci"),
    Principal("Node", "", "node-a"),
]
VERBS = sorted(READ | WRITE | {"action", "connect", "status"})


@pytest.mark.parametrize("principal", PRINCIPALS, ids=str)
@pytest.mark.parametrize("kind", sorted(info.kind for info in KINDS))
@pytest.mark.parametrize("node_scope", [None, "node-a", "node-b"])
def test_a_yes_needs_no_store_and_authorize_agrees(
    principal: Principal, kind: str, node_scope: str | None
) -> None:
    for verb in VERBS:
        if not may_without_store(principal, verb, kind, node_scope):
            continue
        for namespace in (None, "team-a"):
            authorize(
                NoStore(),  # type: ignore[arg-type]
                principal,
                verb,
                kind,
                namespace,
                plural=kind.lower() + "s",
                node_scope=node_scope,
            )


def test_what_needs_role_bindings_is_not_a_yes() -> None:
    someone = Principal("ServiceAccount", "team-a", "ci")
    assert not may_without_store(someone, "list", "VirtualMachine")
    assert may_without_store(someone, "list", "Node")
    node = Principal("Node", "", "node-a")
    assert not may_without_store(node, "list", "VirtualMachine")
    assert may_without_store(node, "list", "VirtualMachine", "node-a")
    assert not may_without_store(node, "list", "Namespace")
    with pytest.raises(Forbidden):
        authorize(NoStore(), node, "list", "Namespace", None, plural="namespaces")  # type: ignore[arg-type]
