"""The agent's reconcile step as an explicit table: (desired, actual) -> action.

Desired comes from the VM object (its deletionTimestamp and spec.powerState), actual from the
backend. Every pair is listed, so every case is visible and tested; an action moves the VM one step
and the next reconcile takes the next one.
"""

from enum import StrEnum
from typing import Any

from shoal.backends.base import Actual


class Desired(StrEnum):
    ABSENT = "Absent"
    RUNNING = "Running"
    STOPPED = "Stopped"
    SUSPENDED = "Suspended"


class Action(StrEnum):
    NOTHING = "Nothing"
    CREATE = "Create"  # create the disk and state, do not boot
    CREATE_AND_START = "CreateAndStart"
    START = "Start"
    STOP = "Stop"
    SUSPEND = "Suspend"
    RESUME = "Resume"
    DELETE = "Delete"  # stop hard, remove disk and state
    RELEASE = "Release"  # nothing left on this node: drop the agent's finalizer
    WAIT = "Wait"  # a transition is under way; report it


D, A, X = Desired, Actual, Action

TABLE: dict[tuple[Desired, Actual], Action] = {
    (D.ABSENT, A.ABSENT): X.RELEASE,
    (D.ABSENT, A.STOPPED): X.DELETE,
    (D.ABSENT, A.STARTING): X.DELETE,
    (D.ABSENT, A.RUNNING): X.DELETE,
    (D.ABSENT, A.SUSPENDED): X.DELETE,
    (D.ABSENT, A.FAILED): X.DELETE,
    (D.RUNNING, A.ABSENT): X.CREATE_AND_START,
    (D.RUNNING, A.STOPPED): X.START,
    (D.RUNNING, A.STARTING): X.WAIT,
    (D.RUNNING, A.RUNNING): X.NOTHING,
    (D.RUNNING, A.SUSPENDED): X.RESUME,
    (D.RUNNING, A.FAILED): X.NOTHING,  # stays Failed until stopped (and started) or deleted
    (D.STOPPED, A.ABSENT): X.CREATE,
    (D.STOPPED, A.STOPPED): X.NOTHING,
    (D.STOPPED, A.STARTING): X.STOP,
    (D.STOPPED, A.RUNNING): X.STOP,
    (D.STOPPED, A.SUSPENDED): X.STOP,
    (D.STOPPED, A.FAILED): X.STOP,  # clears the failure: a later start boots afresh
    (D.SUSPENDED, A.ABSENT): X.CREATE_AND_START,
    (D.SUSPENDED, A.STOPPED): X.START,
    (D.SUSPENDED, A.STARTING): X.WAIT,
    (D.SUSPENDED, A.RUNNING): X.SUSPEND,
    (D.SUSPENDED, A.SUSPENDED): X.NOTHING,
    (D.SUSPENDED, A.FAILED): X.NOTHING,
}

# The phase to report once an action is done, from what the backend shows.
PHASE_OF: dict[Actual, str] = {
    A.ABSENT: "Scheduled",
    A.STOPPED: "Stopped",
    A.STARTING: "Starting",
    A.RUNNING: "Running",
    A.SUSPENDED: "Suspended",
    A.FAILED: "Failed",
}

# The phase to report while an action runs.
PHASE_DURING: dict[Action, str] = {
    X.CREATE_AND_START: "Starting",
    X.START: "Starting",
    X.STOP: "Stopping",
    X.DELETE: "Terminating",
}


def desired_of(vm: dict[str, Any]) -> Desired:
    if vm["metadata"].get("deletionTimestamp"):
        return Desired.ABSENT
    return Desired(vm["spec"].get("powerState") or "Running")


def lost_with_node(vm: dict[str, Any]) -> bool:
    """The node-lifecycle loop failed this VM (Failed, reason NodeLost) while this node was gone.

    A returning agent must not bring it back: it is treated as desired Stopped (stop whatever
    still runs, create nothing) and its Failed/NodeLost status is left as it is. Deleting it
    still goes the usual way.
    """
    status = vm.get("status") or {}
    return (
        not vm["metadata"].get("deletionTimestamp")
        and status.get("phase") == "Failed"
        and status.get("reason") == "NodeLost"
    )


def decide(desired: Desired, actual: Actual) -> Action:
    return TABLE[(desired, actual)]
