"""The agent's reconcile table: every (desired, actual) pair, and what each leads to."""

import itertools
from typing import Any

import pytest

from shoal.agent.reconcile import (
    PHASE_DURING,
    PHASE_OF,
    TABLE,
    Action,
    Desired,
    decide,
    desired_of,
)
from shoal.backends.base import Actual

D, A, X = Desired, Actual, Action

# Written out independently of the module: what the agent should do in each case.
EXPECTED: dict[tuple[Desired, Actual], Action] = {
    # the VM is being deleted: tear down whatever is there, then let the object go
    (D.ABSENT, A.ABSENT): X.RELEASE,
    (D.ABSENT, A.STOPPED): X.DELETE,
    (D.ABSENT, A.STARTING): X.DELETE,
    (D.ABSENT, A.RUNNING): X.DELETE,
    (D.ABSENT, A.SUSPENDED): X.DELETE,
    (D.ABSENT, A.FAILED): X.DELETE,
    # wanted running
    (D.RUNNING, A.ABSENT): X.CREATE_AND_START,
    (D.RUNNING, A.STOPPED): X.START,
    (D.RUNNING, A.STARTING): X.WAIT,
    (D.RUNNING, A.RUNNING): X.NOTHING,
    (D.RUNNING, A.SUSPENDED): X.RESUME,
    (D.RUNNING, A.FAILED): X.NOTHING,
    # wanted stopped: a disk exists, nothing runs
    (D.STOPPED, A.ABSENT): X.CREATE,
    (D.STOPPED, A.STOPPED): X.NOTHING,
    (D.STOPPED, A.STARTING): X.STOP,
    (D.STOPPED, A.RUNNING): X.STOP,
    (D.STOPPED, A.SUSPENDED): X.STOP,
    (D.STOPPED, A.FAILED): X.STOP,
    # wanted suspended: boot it first, then suspend
    (D.SUSPENDED, A.ABSENT): X.CREATE_AND_START,
    (D.SUSPENDED, A.STOPPED): X.START,
    (D.SUSPENDED, A.STARTING): X.WAIT,
    (D.SUSPENDED, A.RUNNING): X.SUSPEND,
    (D.SUSPENDED, A.SUSPENDED): X.NOTHING,
    (D.SUSPENDED, A.FAILED): X.NOTHING,
}


def test_table_covers_every_pair_exactly_once() -> None:
    pairs = set(itertools.product(Desired, Actual))
    assert set(TABLE) == pairs
    assert len(TABLE) == len(Desired) * len(Actual)
    assert all(isinstance(action, Action) for action in TABLE.values())


@pytest.mark.parametrize(
    ("desired", "actual", "action"),
    [(d, a, x) for (d, a), x in EXPECTED.items()],
    ids=[f"{d}-{a}" for d, a in EXPECTED],
)
def test_each_row(desired: Desired, actual: Actual, action: Action) -> None:
    assert decide(desired, actual) == action
    assert TABLE[(desired, actual)] == action


# What an action leaves the backend in, as the sim and qemu backends do it. STARTING settles
# into RUNNING by itself (the guest boots), which a WAIT waits for.
EFFECT: dict[Action, Actual | None] = {
    X.CREATE: A.STOPPED,
    X.CREATE_AND_START: A.STARTING,
    X.START: A.STARTING,
    X.STOP: A.STOPPED,
    X.SUSPEND: A.SUSPENDED,
    X.RESUME: A.RUNNING,
    X.DELETE: A.ABSENT,
    X.WAIT: A.RUNNING,
    X.NOTHING: None,
    X.RELEASE: None,
}
SETTLED: dict[Desired, tuple[Actual, Action]] = {
    D.ABSENT: (A.ABSENT, X.RELEASE),
    D.RUNNING: (A.RUNNING, X.NOTHING),
    D.STOPPED: (A.STOPPED, X.NOTHING),
    D.SUSPENDED: (A.SUSPENDED, X.NOTHING),
}


@pytest.mark.parametrize("actual", list(Actual))
@pytest.mark.parametrize("desired", list(Desired))
def test_repeated_reconciles_converge(desired: Desired, actual: Actual) -> None:
    """From any state, taking the table's action again and again reaches the wanted state."""
    state, steps = actual, 0
    while (action := decide(desired, state)) not in (X.NOTHING, X.RELEASE):
        after = EFFECT[action]
        assert after is not None
        state = after
        steps += 1
        assert steps <= 3, f"{desired} from {actual} does not settle"
    if state == A.FAILED:  # a failed VM that should run waits for a stop (see the table)
        assert desired in (D.RUNNING, D.SUSPENDED) and action == X.NOTHING
        return
    assert (state, action) == SETTLED[desired]


def test_settled_states_do_nothing() -> None:
    for desired, (actual, action) in SETTLED.items():
        assert decide(desired, actual) == action


def test_phases() -> None:
    assert set(PHASE_OF) == set(Actual)
    assert PHASE_OF[A.ABSENT] == "Scheduled"
    assert all(PHASE_OF[a] == a.value for a in Actual if a != A.ABSENT)
    assert PHASE_DURING == {
        X.CREATE_AND_START: "Starting",
        X.START: "Starting",
        X.STOP: "Stopping",
        X.DELETE: "Terminating",
    }


def vm(power_state: str | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "vm", "namespace": "default", "uid": "u"}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00.000000Z"
    spec: dict[str, Any] = {"image": "ubuntu"}
    if power_state is not None:
        spec["powerState"] = power_state
    return {"kind": "VirtualMachine", "metadata": meta, "spec": spec}


@pytest.mark.parametrize(
    ("power_state", "desired"),
    [
        ("Running", D.RUNNING),
        ("Stopped", D.STOPPED),
        ("Suspended", D.SUSPENDED),
        (None, D.RUNNING),
        ("", D.RUNNING),
    ],
)
def test_desired_of_power_state(power_state: str | None, desired: Desired) -> None:
    assert desired_of(vm(power_state)) == desired


@pytest.mark.parametrize("power_state", ["Running", "Stopped", "Suspended", None])
def test_desired_of_deleted_vm_is_absent(power_state: str | None) -> None:
    assert desired_of(vm(power_state, deleting=True)) == D.ABSENT


def test_desired_of_unknown_power_state_raises() -> None:
    with pytest.raises(ValueError):
        desired_of(vm("Hibernating"))
