"""What one sync of a runner pool does, decided from what it sees: pure, so every case can be
tested directly (tests/unit/test_runner_plan.py).

The reconciler reads, in this order, the CI system's queued jobs, its runners, and the pool's
VMs, then applies the plan. Reading the jobs before the runners matters: a runner that takes a
job between the two reads shows up busy, so a job is never both gone from the queue and missing
from the runners (which would look like a runner whose job went elsewhere).

Runner states, each runner VM in exactly one:
- starting: its VM exists and its CI-side runner is not online yet;
- idle: online, no job;
- busy: running a job;
- finishing: its VM is being deleted, or ran its script, or its runner ended its one job.
"""

from dataclasses import dataclass, field

from shoal.ci.runners.provider import CiRunner, PoolIdentity, QueuedJob

# A VM made after its runner was registered may not be listed by the CI system at once; a
# runner listed without its VM may be between registration and the VM's creation.
REGISTRATION_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class RunnerVM:
    """A VM of the pool, as the store has it."""

    name: str
    age: float  # seconds since it was made
    deleting: bool
    done: bool  # stopped, failed, or its startup script ended
    job_id: str | None = None  # the job it was started for, when the provider binds jobs
    seen_online: bool = False  # its runner was once online (kept in the VM's annotations)
    seen_busy: bool = False  # its runner once ran a job
    waiting_for_node: str = ""  # the scheduler's reason while it waits for a node


@dataclass(frozen=True)
class PoolSettings:
    max_runners: int
    min_idle: int
    idle_timeout: float
    registers_ahead: bool
    binds_jobs: bool


@dataclass
class Plan:
    create: list[QueuedJob | None] = field(default_factory=list)  # one new runner each
    delete_vms: list[tuple[str, str]] = field(default_factory=list)  # (VM, why)
    remove_runners: list[tuple[CiRunner, str]] = field(default_factory=list)  # (runner, why)
    claim: list[CiRunner] = field(default_factory=list)  # first seen busy
    seen_online: list[str] = field(default_factory=list)  # VMs to mark
    seen_busy: list[str] = field(default_factory=list)
    # CI-side runners without a VM this time: removed if still so next time.
    vm_less: frozenset[str] = frozenset()
    starting: int = 0
    idle: int = 0
    busy: int = 0
    finishing: int = 0
    jobs_waiting: int = 0
    message: str = ""
    at_max: bool = False


@dataclass
class _Free:
    """A starting or idle runner not bound to a job: it takes whichever job comes."""

    vm: RunnerVM
    runner: CiRunner | None
    idle: bool


def plan(
    settings: PoolSettings,
    identity: PoolIdentity,
    jobs: list[QueuedJob],
    runners: list[CiRunner],
    vms: list[RunnerVM],
    previously_vm_less: frozenset[str] = frozenset(),
) -> Plan:
    result = Plan(jobs_waiting=len(jobs))
    by_vm = {vm_name: runner for runner in runners if (vm_name := identity.vm_name(runner.name))}
    vm_names = {vm.name for vm in vms}
    result.vm_less = frozenset(r.name for name, r in by_vm.items() if name not in vm_names)
    for name, orphan in by_vm.items():
        if name not in vm_names and orphan.name in previously_vm_less and not orphan.busy:
            result.remove_runners.append((orphan, "its VM is gone"))

    queued_ids = {job.id for job in jobs}
    free: list[_Free] = []
    bound: set[str] = set()
    for vm in vms:
        runner = by_vm.get(vm.name)
        state = _state_of(settings, vm, runner, queued_ids, result)
        if state == "finishing":
            result.finishing += 1
            continue
        if vm.job_id is not None:  # a busy runner's job may still be listed as queued
            bound.add(vm.job_id)
        if state == "busy":
            result.busy += 1
            continue
        if vm.age > settings.idle_timeout:
            _retire(result, vm, runner, f"took no job in {settings.idle_timeout:.0f} s")
            result.finishing += 1
            continue
        if state == "idle":
            result.idle += 1
        else:
            result.starting += 1
        if vm.job_id is None:
            free.append(_Free(vm, runner, state == "idle"))

    unbound_jobs = [job for job in jobs if job.id not in bound]
    wanted_free = (0 if settings.binds_jobs else len(unbound_jobs)) + settings.min_idle
    surplus = _surplus(free, wanted_free)
    for spare in surplus:
        _retire(result, spare.vm, spare.runner, "no job waits for it")
        if spare.idle:
            result.idle -= 1
        else:
            result.starting -= 1
        result.finishing += 1

    new: list[QueuedJob | None] = []
    if settings.binds_jobs:
        new += unbound_jobs
        new += [None] * max(0, settings.min_idle - len(free))
    else:  # the CI system gives a job to whichever runner asks: runners are not bound
        new += [None] * max(0, len(unbound_jobs) - len(free))
        new += [None] * max(0, settings.min_idle - max(0, len(free) - len(unbound_jobs)))
    room = max(0, settings.max_runners - len(vms))
    result.create = new[:room]
    left_waiting = len(new) - len(result.create)
    result.at_max = left_waiting > 0
    result.message = _message(settings, vms, left_waiting)
    return result


def _state_of(
    settings: PoolSettings,
    vm: RunnerVM,
    runner: CiRunner | None,
    queued_ids: set[str],
    result: Plan,
) -> str:
    """The VM's state; the cleanup it needs goes into result."""
    if vm.deleting:
        return "finishing"
    if vm.done:
        if runner is not None and not runner.busy:
            result.remove_runners.append((runner, "its VM finished"))
        return "finishing"
    if runner is None:
        if vm.seen_online or (settings.registers_ahead and vm.age > REGISTRATION_GRACE_SECONDS):
            result.delete_vms.append((vm.name, "its runner is gone"))
            return "finishing"
        if vm.job_id is not None and vm.job_id not in queued_ids:
            result.delete_vms.append((vm.name, f"job {vm.job_id} no longer waits"))
            return "finishing"
        return "starting"
    if runner.online and not vm.seen_online:
        result.seen_online.append(vm.name)
    if runner.busy:
        if not vm.seen_busy:
            result.claim.append(runner)
            result.seen_busy.append(vm.name)
        return "busy"
    if vm.seen_busy:
        _retire(result, vm, runner, "it ran its job")
        return "finishing"
    if vm.seen_online and not runner.online:
        _retire(result, vm, runner, "its runner went offline")
        return "finishing"
    return "idle" if runner.online else "starting"


def _retire(result: Plan, vm: RunnerVM, runner: CiRunner | None, why: str) -> None:
    """Remove the runner on the CI side, then its VM (the reconciler deletes the VM only once
    the CI system has let the runner go)."""
    if runner is not None:
        result.remove_runners.append((runner, why))
    else:
        result.delete_vms.append((vm.name, why))


def _surplus(free: list[_Free], wanted: int) -> list[_Free]:
    """The free runners beyond wanted: starting ones first (the youngest has done least), then
    idle ones."""
    if len(free) <= wanted:
        return []
    order = sorted(free, key=lambda f: (f.idle, f.vm.age))
    return order[: len(free) - wanted]


def _message(settings: PoolSettings, vms: list[RunnerVM], left_waiting: int) -> str:
    parts = []
    if left_waiting:
        noun = "job" if left_waiting == 1 else "jobs"
        parts.append(f"{left_waiting} {noun} waiting: at maxRunners {settings.max_runners}")
    reasons = [vm.waiting_for_node for vm in vms if vm.waiting_for_node and not vm.deleting]
    if reasons:
        noun = "runner" if len(reasons) == 1 else "runners"
        parts.append(f"{len(reasons)} {noun} waiting for a node: {reasons[0]}")
    return "; ".join(parts)
