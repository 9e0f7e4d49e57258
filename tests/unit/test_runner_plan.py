"""The runner-pool planner (shoal.ci.runners.plan): every case of the state table as a small
test on the exact Plan fields it decides, then invariants over random pools with hypothesis."""

import dataclasses
from dataclasses import dataclass

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from shoal.ci.runners.plan import (
    REGISTRATION_GRACE_SECONDS,
    Plan,
    PoolSettings,
    RunnerVM,
    plan,
)
from shoal.ci.runners.provider import CiRunner, PoolIdentity, QueuedJob

POOL = PoolIdentity("team", "linux")
IDLE_TIMEOUT = 900.0


def name(n: int) -> str:
    """The n-th VM name of POOL (`linux-` and 10 lower-case letters or digits)."""
    return f"linux-vm{n:08d}"


def pool(
    max_runners: int = 10,
    min_idle: int = 0,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
    registers_ahead: bool = True,
    binds_jobs: bool = False,
) -> PoolSettings:
    return PoolSettings(
        max_runners=max_runners,
        min_idle=min_idle,
        idle_timeout=idle_timeout,
        registers_ahead=registers_ahead,
        binds_jobs=binds_jobs,
    )


def vm(
    n: int,
    age: float = 10.0,
    *,
    deleting: bool = False,
    done: bool = False,
    job: str | None = None,
    seen_online: bool = False,
    seen_busy: bool = False,
    waiting: str = "",
) -> RunnerVM:
    return RunnerVM(
        name=name(n),
        age=age,
        deleting=deleting,
        done=done,
        job_id=job,
        seen_online=seen_online,
        seen_busy=seen_busy,
        waiting_for_node=waiting,
    )


def runner(n: int, *, online: bool = True, busy: bool = False) -> CiRunner:
    """The CI-side runner of VM n."""
    return CiRunner(name=POOL.runner_name(name(n)), id=f"r{n}", online=online, busy=busy)


def jobs(*ids: str) -> list[QueuedJob]:
    return [QueuedJob(id) for id in ids]


def unbound(count: int) -> list[QueuedJob | None]:
    """create for runners started for no job: what a provider that binds no jobs gets."""
    return [None] * count


def removed(result: Plan) -> list[tuple[str | None, str]]:
    """remove_runners as (VM name, why)."""
    return [(POOL.vm_name(r.name), why) for r, why in result.remove_runners]


def counts(result: Plan) -> tuple[int, int, int, int]:
    return result.starting, result.idle, result.busy, result.finishing


# --- jobs and room ---------------------------------------------------------------------------


def test_nothing_to_do_gives_an_empty_plan() -> None:
    assert plan(pool(), POOL, [], [], []) == Plan()


@pytest.mark.parametrize("binds_jobs", [False, True])
def test_each_waiting_job_gets_a_runner(binds_jobs: bool) -> None:
    """A provider that binds jobs starts each runner for its job; the others start runners
    for no job in particular (the CI system gives a job to whichever runner asks)."""
    waiting = jobs("a", "b", "c")
    result = plan(pool(binds_jobs=binds_jobs), POOL, waiting, [], [])
    assert result.create == (waiting if binds_jobs else unbound(3))
    assert result.jobs_waiting == 3
    assert not result.at_max
    assert result.message == ""
    assert result.delete_vms == result.remove_runners == []
    assert counts(result) == (0, 0, 0, 0)


@pytest.mark.parametrize("binds_jobs", [False, True])
def test_more_jobs_than_max_runners_creates_up_to_max(binds_jobs: bool) -> None:
    waiting = jobs("a", "b", "c", "d", "e")
    result = plan(pool(max_runners=2, binds_jobs=binds_jobs), POOL, waiting, [], [])
    assert result.create == (waiting[:2] if binds_jobs else unbound(2))
    assert result.at_max
    assert result.message == "3 jobs waiting: at maxRunners 2"
    assert result.jobs_waiting == 5


def test_one_job_left_waiting_is_singular() -> None:
    result = plan(pool(max_runners=1), POOL, jobs("a", "b"), [], [])
    assert result.create == unbound(1)
    assert result.message == "1 job waiting: at maxRunners 1"


def test_max_runners_zero_creates_nothing() -> None:
    result = plan(pool(max_runners=0), POOL, jobs("a"), [], [])
    assert result.create == []
    assert result.at_max
    assert result.message == "1 job waiting: at maxRunners 0"


def test_room_counts_every_existing_vm_also_finishing_ones() -> None:
    vms = [vm(1, deleting=True), vm(2, done=True), vm(3, seen_busy=True)]
    runners = [runner(3, busy=True)]
    result = plan(pool(max_runners=4), POOL, jobs("a", "b", "c", "d"), runners, vms)
    assert counts(result) == (0, 0, 1, 2)
    assert result.create == unbound(1)
    assert result.at_max
    assert result.message == "3 jobs waiting: at maxRunners 4"


def test_more_vms_than_max_runners_creates_nothing() -> None:
    vms = [vm(n, seen_busy=True) for n in range(3)]
    runners = [runner(n, busy=True) for n in range(3)]
    result = plan(pool(max_runners=2), POOL, jobs("a"), runners, vms)
    assert result.create == []
    assert result.at_max
    assert result.busy == 3


# --- free runners: starting and idle -----------------------------------------------------------


def test_a_starting_vm_without_runner_covers_one_job() -> None:
    result = plan(pool(), POOL, jobs("a", "b"), [], [vm(1)])
    assert counts(result) == (1, 0, 0, 0)
    assert result.create == unbound(1)


def test_a_registered_runner_not_online_yet_is_starting_and_covers_one_job() -> None:
    result = plan(pool(), POOL, jobs("a", "b"), [runner(1, online=False)], [vm(1)])
    assert counts(result) == (1, 0, 0, 0)
    assert result.seen_online == []
    assert result.create == unbound(1)


def test_an_idle_runner_covers_one_job_and_is_marked_seen_online() -> None:
    result = plan(pool(), POOL, jobs("a", "b"), [runner(1)], [vm(1)])
    assert counts(result) == (0, 1, 0, 0)
    assert result.seen_online == [name(1)]
    assert result.create == unbound(1)
    assert result.claim == result.seen_busy == []


def test_seen_online_is_marked_only_once() -> None:
    result = plan(pool(), POOL, jobs("a"), [runner(1)], [vm(1, seen_online=True)])
    assert result.seen_online == []
    assert result.idle == 1


def test_free_runners_covering_every_job_create_nothing() -> None:
    result = plan(pool(), POOL, jobs("a", "b"), [runner(1)], [vm(1), vm(2)])
    assert counts(result) == (1, 1, 0, 0)
    assert result.create == []
    assert result.delete_vms == result.remove_runners == []


def test_surplus_retires_starting_runners_first_youngest_first() -> None:
    vms = [vm(1, age=100), vm(2, age=50), vm(3, age=20)]
    runners = [runner(1), runner(3, online=False)]
    result = plan(pool(), POOL, jobs("a"), runners, vms)
    # starting: 3 (age 20, registered) and 2 (age 50, no runner yet); idle: 1 is kept
    assert removed(result) == [(name(3), "no job waits for it")]
    assert result.delete_vms == [(name(2), "no job waits for it")]
    assert counts(result) == (0, 1, 0, 2)
    assert result.create == []


def test_surplus_idle_runners_go_youngest_first() -> None:
    vms = [vm(1, age=300), vm(2, age=100), vm(3, age=200)]
    runners = [runner(1), runner(2), runner(3)]
    result = plan(pool(min_idle=1), POOL, [], runners, vms)
    assert removed(result) == [
        (name(2), "no job waits for it"),
        (name(3), "no job waits for it"),
    ]
    assert result.delete_vms == []
    assert counts(result) == (0, 1, 0, 2)


def test_surplus_takes_every_starting_runner_before_any_idle_one() -> None:
    vms = [vm(1, age=5), vm(2, age=55), vm(3, age=1)]
    runners = [runner(1), runner(3)]
    result = plan(pool(), POOL, [], runners, vms)
    assert result.delete_vms == [(name(2), "no job waits for it")]
    assert removed(result) == [
        (name(3), "no job waits for it"),
        (name(1), "no job waits for it"),
    ]
    assert counts(result) == (0, 0, 0, 3)


def test_min_idle_keeps_extra_free_runners() -> None:
    vms = [vm(1), vm(2), vm(3)]
    runners = [runner(1), runner(2), runner(3)]
    result = plan(pool(min_idle=2), POOL, jobs("a"), runners, vms)
    assert result.remove_runners == result.delete_vms == []
    assert result.create == []
    assert result.idle == 3


def test_min_idle_creates_runners_without_a_job() -> None:
    result = plan(pool(min_idle=2), POOL, jobs("a"), [], [])
    assert result.create == unbound(3)


def test_min_idle_counts_free_runners_beyond_the_jobs() -> None:
    result = plan(pool(min_idle=2), POOL, [], [runner(1)], [vm(1)])
    assert result.create == [None]
    result = plan(pool(min_idle=2), POOL, jobs("a"), [runner(1)], [vm(1)])
    assert result.create == [None, None]


def test_min_idle_runners_are_capped_by_max_runners() -> None:
    result = plan(pool(max_runners=2, min_idle=2), POOL, jobs("a"), [], [])
    assert result.create == unbound(2)
    assert result.at_max
    assert result.message == "1 job waiting: at maxRunners 2"


# --- busy runners ------------------------------------------------------------------------------


def test_a_runner_first_seen_busy_is_claimed_and_marked() -> None:
    busy = runner(1, busy=True)
    result = plan(pool(), POOL, [], [busy], [vm(1, seen_online=True)])
    assert counts(result) == (0, 0, 1, 0)
    assert result.claim == [busy]
    assert result.seen_busy == [name(1)]
    assert result.remove_runners == result.delete_vms == []


def test_a_runner_busy_at_once_is_also_marked_seen_online() -> None:
    result = plan(pool(), POOL, [], [runner(1, busy=True)], [vm(1)])
    assert result.seen_online == [name(1)]
    assert result.seen_busy == [name(1)]


def test_a_busy_runner_already_seen_busy_is_not_claimed_again() -> None:
    vms = [vm(1, seen_online=True, seen_busy=True)]
    result = plan(pool(), POOL, [], [runner(1, busy=True)], vms)
    assert result.busy == 1
    assert result.claim == result.seen_busy == result.seen_online == []


def test_a_busy_runner_does_not_cover_a_waiting_job() -> None:
    vms = [vm(1, seen_online=True, seen_busy=True)]
    result = plan(pool(), POOL, jobs("a"), [runner(1, busy=True)], vms)
    assert result.create == unbound(1)


# --- runners that are done with their job --------------------------------------------------------


def test_a_runner_that_ran_its_job_and_is_idle_again_is_retired() -> None:
    vms = [vm(1, seen_online=True, seen_busy=True)]
    result = plan(pool(), POOL, jobs("a"), [runner(1)], vms)
    assert removed(result) == [(name(1), "it ran its job")]
    assert result.delete_vms == []
    assert counts(result) == (0, 0, 0, 1)
    assert result.create == unbound(1)  # it takes no second job


def test_a_runner_that_ran_its_job_and_went_offline_is_retired() -> None:
    vms = [vm(1, seen_online=True, seen_busy=True)]
    result = plan(pool(), POOL, [], [runner(1, online=False)], vms)
    assert removed(result) == [(name(1), "it ran its job")]
    assert result.finishing == 1


def test_a_runner_once_online_now_offline_is_retired() -> None:
    result = plan(pool(), POOL, [], [runner(1, online=False)], [vm(1, seen_online=True)])
    assert removed(result) == [(name(1), "its runner went offline")]
    assert result.delete_vms == []
    assert counts(result) == (0, 0, 0, 1)


# --- VMs that finished or are being deleted ----------------------------------------------------


def test_a_done_vm_is_finishing_and_its_runner_removed() -> None:
    result = plan(pool(), POOL, jobs("a"), [runner(1)], [vm(1, done=True, seen_online=True)])
    assert removed(result) == [(name(1), "its VM finished")]
    assert result.delete_vms == []
    assert counts(result) == (0, 0, 0, 1)
    assert result.create == unbound(1)


def test_a_done_vm_whose_runner_is_busy_keeps_its_runner() -> None:
    result = plan(pool(), POOL, [], [runner(1, busy=True)], [vm(1, done=True)])
    assert result.remove_runners == result.delete_vms == []
    assert result.claim == result.seen_busy == result.seen_online == []
    assert counts(result) == (0, 0, 0, 1)


def test_a_done_vm_without_runner_is_only_finishing() -> None:
    result = plan(pool(), POOL, [], [], [vm(1, 500, done=True)])
    assert result.remove_runners == result.delete_vms == []
    assert counts(result) == (0, 0, 0, 1)


@pytest.mark.parametrize("busy", [False, True])
def test_a_deleting_vm_is_finishing_and_nothing_else(busy: bool) -> None:
    vms = [vm(1, 5000, deleting=True, done=True, seen_busy=True)]
    result = plan(pool(), POOL, [], [runner(1, busy=busy)], vms)
    assert result == Plan(finishing=1)


# --- a VM whose runner the CI system does not list ------------------------------------------


def test_registers_ahead_vm_without_runner_past_the_grace_is_deleted() -> None:
    result = plan(pool(), POOL, jobs("a"), [], [vm(1, REGISTRATION_GRACE_SECONDS + 1)])
    assert result.delete_vms == [(name(1), "its runner is gone")]
    assert result.remove_runners == []
    assert counts(result) == (0, 0, 0, 1)
    assert result.create == unbound(1)


@pytest.mark.parametrize("age", [0.0, REGISTRATION_GRACE_SECONDS - 1, REGISTRATION_GRACE_SECONDS])
def test_registers_ahead_vm_without_runner_within_the_grace_is_starting(age: float) -> None:
    result = plan(pool(), POOL, jobs("a"), [], [vm(1, age)])
    assert result.delete_vms == []
    assert counts(result) == (1, 0, 0, 0)
    assert result.create == []


def test_not_registers_ahead_vm_without_runner_is_starting_however_old() -> None:
    settings = pool(registers_ahead=False, idle_timeout=3600)
    result = plan(settings, POOL, jobs("a"), [], [vm(1, 1000)])
    assert result.delete_vms == []
    assert counts(result) == (1, 0, 0, 0)
    assert result.create == []


@pytest.mark.parametrize("registers_ahead", [False, True])
def test_a_vm_whose_runner_was_online_and_is_gone_is_deleted(registers_ahead: bool) -> None:
    settings = pool(registers_ahead=registers_ahead)
    result = plan(settings, POOL, [], [], [vm(1, 5, seen_online=True)])
    assert result.delete_vms == [(name(1), "its runner is gone")]
    assert counts(result) == (0, 0, 0, 1)


@pytest.mark.parametrize("registers_ahead", [False, True])
def test_a_vm_without_runner_whose_job_no_longer_waits_is_deleted(registers_ahead: bool) -> None:
    settings = pool(registers_ahead=registers_ahead, binds_jobs=True)
    result = plan(settings, POOL, jobs("b"), [], [vm(1, 5, job="a")])
    assert result.delete_vms == [(name(1), "job a no longer waits")]
    assert counts(result) == (0, 0, 0, 1)
    assert result.create == jobs("b")


def test_a_vm_without_runner_whose_job_still_waits_is_starting() -> None:
    settings = pool(registers_ahead=False, binds_jobs=True)
    result = plan(settings, POOL, jobs("a"), [], [vm(1, 500, job="a")])
    assert result.delete_vms == []
    assert counts(result) == (1, 0, 0, 0)
    assert result.create == []


# --- providers that bind jobs ------------------------------------------------------------------


def test_binds_jobs_creates_runners_for_the_jobs_no_vm_is_bound_to() -> None:
    vms = [vm(1, job="a"), vm(2, job="b")]
    result = plan(pool(binds_jobs=True), POOL, jobs("a", "b", "c"), [runner(2)], vms)
    assert counts(result) == (1, 1, 0, 0)
    assert result.create == jobs("c")
    assert result.remove_runners == result.delete_vms == []


def test_binds_jobs_a_runner_without_job_takes_no_waiting_job() -> None:
    """With binds_jobs a free runner covers min_idle only: the job gets its own runner."""
    result = plan(pool(binds_jobs=True), POOL, jobs("a"), [runner(1)], [vm(1)])
    assert removed(result) == [(name(1), "no job waits for it")]
    assert result.create == jobs("a")


def test_binds_jobs_min_idle_adds_runners_without_a_job() -> None:
    result = plan(pool(min_idle=2, binds_jobs=True), POOL, jobs("a"), [runner(1)], [vm(1)])
    assert result.remove_runners == []
    assert result.create == [QueuedJob("a"), None]


def test_binds_jobs_a_busy_runners_job_still_listed_as_queued_gets_no_second_runner() -> None:
    """The jobs are read before the runners, so a runner that takes its job between the two
    reads is busy while its job is still listed as queued. A runner bound to that job runs it
    (it takes no other): a second runner for it would never get it."""
    vms = [vm(1, job="a", seen_online=True)]
    result = plan(pool(binds_jobs=True), POOL, jobs("a"), [runner(1, busy=True)], vms)
    assert result.busy == 1
    assert result.create == []


def test_binds_jobs_a_bound_runner_is_never_surplus() -> None:
    result = plan(pool(binds_jobs=True), POOL, jobs("a"), [runner(1)], [vm(1, job="a")])
    assert result.remove_runners == result.delete_vms == []
    assert result.create == []
    assert result.idle == 1


# --- CI-side runners without a VM ----------------------------------------------------------------


def test_a_runner_without_vm_is_kept_the_first_time() -> None:
    orphan = runner(7)
    result = plan(pool(), POOL, [], [orphan], [])
    assert result.vm_less == {orphan.name}
    assert result.remove_runners == []
    assert counts(result) == (0, 0, 0, 0)


def test_a_runner_without_vm_twice_in_a_row_is_removed() -> None:
    orphan = runner(7, online=False)
    result = plan(pool(), POOL, [], [orphan], [], frozenset({orphan.name}))
    assert result.remove_runners == [(orphan, "its VM is gone")]
    assert result.vm_less == {orphan.name}
    assert result.delete_vms == []


def test_a_busy_runner_without_vm_is_not_removed() -> None:
    orphan = runner(7, busy=True)
    result = plan(pool(), POOL, [], [orphan], [], frozenset({orphan.name}))
    assert result.remove_runners == []
    assert result.claim == []
    assert result.vm_less == {orphan.name}


def test_a_runner_whose_vm_appeared_is_no_longer_vm_less() -> None:
    result = plan(pool(min_idle=1), POOL, [], [runner(1)], [vm(1)], frozenset({runner(1).name}))
    assert result.vm_less == frozenset()
    assert result.remove_runners == []
    assert result.idle == 1


FOREIGN = [
    "other.linux-vm00000001",  # the same pool name in another namespace
    "team.mac-vm00000001",  # another pool of the namespace
    "team.linux-VM00000001",  # not a name this pool makes
    "team.linux-vm0000001",
    "team.linux-vm00000001x",
    "linux-vm00000001",
    "builder-1",
]


def test_runners_of_other_pools_are_ignored() -> None:
    foreign = [CiRunner(n, n, online=True, busy=False) for n in FOREIGN]
    assert not any(POOL.owns(r.name) for r in foreign)
    names = frozenset(FOREIGN)
    assert plan(pool(), POOL, [], foreign, [], names) == Plan()
    # nor do they count for this pool's VMs: VM 1 has no runner of its own
    result = plan(pool(), POOL, [], foreign, [vm(1, 500, seen_online=True)], names)
    assert result.delete_vms == [(name(1), "its runner is gone")]
    assert result.remove_runners == []
    assert result.vm_less == frozenset()


# --- idle timeout ------------------------------------------------------------------------------


def test_a_starting_vm_without_runner_past_the_idle_timeout_is_deleted() -> None:
    settings = pool(registers_ahead=False, idle_timeout=600)
    result = plan(settings, POOL, jobs("a"), [], [vm(1, 601)])
    assert result.delete_vms == [(name(1), "took no job in 600 s")]
    assert counts(result) == (0, 0, 0, 1)
    assert result.create == unbound(1)  # it no longer covers the job


def test_a_starting_runner_past_the_idle_timeout_is_retired() -> None:
    settings = pool(idle_timeout=600)
    result = plan(settings, POOL, [], [runner(1, online=False)], [vm(1, 601)])
    assert removed(result) == [(name(1), "took no job in 600 s")]
    assert result.delete_vms == []
    assert counts(result) == (0, 0, 0, 1)


def test_an_idle_runner_past_the_idle_timeout_is_retired() -> None:
    result = plan(pool(min_idle=1), POOL, jobs("a"), [runner(1)], [vm(1, IDLE_TIMEOUT + 1)])
    assert removed(result) == [(name(1), "took no job in 900 s")]
    assert counts(result) == (0, 0, 0, 1)
    assert result.create == unbound(2)


def test_an_idle_runner_at_the_idle_timeout_stays() -> None:
    result = plan(pool(), POOL, jobs("a"), [runner(1)], [vm(1, IDLE_TIMEOUT)])
    assert result.remove_runners == []
    assert result.idle == 1


def test_a_busy_runner_past_the_idle_timeout_stays() -> None:
    vms = [vm(1, 10 * IDLE_TIMEOUT, seen_online=True, seen_busy=True)]
    result = plan(pool(), POOL, [], [runner(1, busy=True)], vms)
    assert result.remove_runners == result.delete_vms == []
    assert counts(result) == (0, 0, 1, 0)


# --- message -----------------------------------------------------------------------------------


def test_a_vm_waiting_for_a_node_is_in_the_message() -> None:
    result = plan(pool(), POOL, [], [], [vm(1, waiting="no node has 8 CPUs free")])
    assert result.message == "1 runner waiting for a node: no node has 8 CPUs free"
    assert not result.at_max


def test_several_vms_waiting_for_a_node_name_the_first_reason() -> None:
    vms = [vm(1, waiting="first"), vm(2), vm(3, waiting="second")]
    result = plan(pool(), POOL, jobs("a", "b", "c"), [], vms)
    assert result.message == "2 runners waiting for a node: first"


def test_a_deleting_vm_waiting_for_a_node_is_not_in_the_message() -> None:
    result = plan(pool(), POOL, [], [], [vm(1, deleting=True, waiting="no node")])
    assert result.message == ""


def test_at_max_and_waiting_for_a_node_both_show() -> None:
    result = plan(pool(max_runners=1), POOL, jobs("a", "b", "c"), [], [vm(1, waiting="no node")])
    assert result.create == []
    assert result.message == "2 jobs waiting: at maxRunners 1; 1 runner waiting for a node: no node"


# --- properties ----------------------------------------------------------------------------------

JOB_IDS = [f"j{n}" for n in range(8)]
ORPHANS = range(100, 104)  # VM numbers no VM of the pool has


@dataclass(frozen=True)
class Scenario:
    settings: PoolSettings
    jobs: list[QueuedJob]
    runners: list[CiRunner]
    vms: list[RunnerVM]
    previously_vm_less: frozenset[str]

    def plan(self) -> Plan:
        return plan(self.settings, POOL, self.jobs, self.runners, self.vms, self.previously_vm_less)


ages = st.one_of(
    st.sampled_from([0.0, REGISTRATION_GRACE_SECONDS, IDLE_TIMEOUT, IDLE_TIMEOUT + 1]),
    st.floats(0, 3 * IDLE_TIMEOUT, allow_nan=False),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    max_runners = draw(st.integers(0, 10))
    settings = PoolSettings(
        max_runners=max_runners,
        min_idle=draw(st.integers(0, max_runners)),
        idle_timeout=draw(st.sampled_from([60.0, IDLE_TIMEOUT])),
        registers_ahead=draw(st.booleans()),
        binds_jobs=draw(st.booleans()),
    )
    queued = jobs(*draw(st.lists(st.sampled_from(JOB_IDS), unique=True, max_size=8)))
    job_ids = st.one_of(st.none(), st.sampled_from([*JOB_IDS, "gone"]))
    vms: list[RunnerVM] = []
    runners: list[CiRunner] = []
    for n in range(draw(st.integers(0, 12))):
        vms.append(
            RunnerVM(
                name=name(n),
                age=draw(ages),
                deleting=draw(st.booleans()),
                done=draw(st.booleans()),
                job_id=draw(job_ids) if settings.binds_jobs else None,
                seen_online=draw(st.booleans()),
                seen_busy=draw(st.booleans()),
                waiting_for_node=draw(st.sampled_from(["", "no node fits"])),
            )
        )
        if draw(st.booleans()):
            runners.append(runner(n, online=draw(st.booleans()), busy=draw(st.booleans())))
    for n in draw(st.lists(st.sampled_from(ORPHANS), unique=True, max_size=3)):
        runners.append(runner(n, online=draw(st.booleans()), busy=draw(st.booleans())))
    for foreign in draw(st.lists(st.sampled_from(FOREIGN), unique=True, max_size=3)):
        runners.append(CiRunner(foreign, foreign, draw(st.booleans()), draw(st.booleans())))
    runners = draw(st.permutations(runners))
    every_name = sorted(r.name for r in runners)
    previously = draw(st.sets(st.sampled_from(every_name))) if every_name else set()
    return Scenario(settings, queued, runners, vms, frozenset(previously))


def _with_job_ids(scenario: Scenario) -> Scenario:
    """The same scenario with VMs bound to jobs though the provider does not bind jobs."""
    bound = [dataclasses.replace(v, job_id=f"j{n % 10}") for n, v in enumerate(scenario.vms)]
    return dataclasses.replace(scenario, vms=bound)


@settings(max_examples=400, deadline=None)
@given(scenarios(), st.booleans())
def test_the_plan_keeps_its_invariants(scenario: Scenario, job_ids_anyway: bool) -> None:
    if job_ids_anyway:
        scenario = _with_job_ids(scenario)
    note(repr(scenario))
    result = scenario.plan()
    vms = scenario.vms
    vm_names = {v.name for v in vms}
    runners_by_name = {r.name: r for r in scenario.runners}

    # never beyond maxRunners
    assert len(vms) + len(result.create) <= max(scenario.settings.max_runners, len(vms))
    assert all(job is None or job in scenario.jobs for job in result.create)
    if not scenario.settings.binds_jobs:
        assert result.create == unbound(len(result.create))

    # only this pool's runners and VMs, never a busy runner, nothing twice
    for ci_runner, _ in result.remove_runners:
        assert runners_by_name[ci_runner.name] == ci_runner
        assert POOL.owns(ci_runner.name)
        assert not ci_runner.busy
    removed_names = [r.name for r, _ in result.remove_runners]
    assert len(set(removed_names)) == len(removed_names)
    deleted = [vm_name for vm_name, _ in result.delete_vms]
    assert len(set(deleted)) == len(deleted)
    assert set(deleted) <= vm_names
    assert not set(deleted) & {POOL.vm_name(n) for n in removed_names}
    not_deleting = {v.name for v in vms if not v.deleting}
    assert set(deleted) <= not_deleting
    for touched in (*result.claim, *(r for r, _ in result.remove_runners)):
        assert touched.name not in FOREIGN

    # every VM in exactly one state
    assert min(counts(result)) >= 0
    assert sum(counts(result)) == len(vms)
    assert result.finishing >= sum(1 for v in vms if v.deleting or v.done)
    assert result.jobs_waiting == len(scenario.jobs)

    # claims: busy runners of live VMs not yet seen busy, each marked
    for claimed in result.claim:
        assert claimed.busy
        assert POOL.vm_name(claimed.name) in vm_names
    assert result.seen_busy == [POOL.vm_name(r.name) for r in result.claim]
    assert len(result.claim) <= result.busy
    assert set(result.seen_online) <= vm_names

    # runners of the pool without a VM this time
    owned = {r.name for r in scenario.runners if POOL.owns(r.name)}
    assert result.vm_less == {n for n in owned if POOL.vm_name(n) not in vm_names}

    assert result.at_max == ("at maxRunners" in result.message)

    if scenario.settings.binds_jobs:
        created = [job.id for job in result.create if job is not None]
        assert len(set(created)) == len(created)
        # No job of a VM the plan keeps (busy ones too) gets a second runner.
        retired = set(deleted) | {POOL.vm_name(n) for n in removed_names}
        kept = [v for v in vms if not (v.deleting or v.done or v.name in retired)]
        bound_to_kept = {v.job_id for v in kept}
        assert not set(created) & bound_to_kept, (created, bound_to_kept)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_a_pool_that_binds_no_jobs_asks_for_exactly_jobs_plus_min_idle(
    scenario: Scenario,
) -> None:
    """Free runners plus new ones are the waiting jobs plus minIdle, unless maxRunners stops it
    (the VMs of a provider that does not bind jobs carry no job)."""
    settings_ = dataclasses.replace(scenario.settings, binds_jobs=False)
    vms = [dataclasses.replace(v, job_id=None) for v in scenario.vms]
    result = dataclasses.replace(scenario, settings=settings_, vms=vms).plan()
    wanted = len(scenario.jobs) + settings_.min_idle
    free_and_new = result.starting + result.idle + len(result.create)
    if result.at_max:
        assert free_and_new < wanted
        room = max(0, settings_.max_runners - len(scenario.vms))
        assert len(result.create) == room
    else:
        assert free_and_new == wanted
