"""The long-lived processes' garbage-collector policy: full passes come on a timer, not on their
own; what survives one is frozen out of the next; everything is let back in now and then."""

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from shoal import gcpolicy


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    while gcpolicy._freeze_survivors in gc.callbacks:
        gc.callbacks.remove(gcpolicy._freeze_survivors)
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_no_full_pass_starts_on_its_own(restored_gc: None) -> None:
    gcpolicy.settle()
    gcpolicy.settle()  # twice (a test runs more than one controller): one callback
    assert gc.callbacks.count(gcpolicy._freeze_survivors) == 1
    full_passes = gc.get_stats()[2]["collections"]
    for _ in range(300_000):  # far more than Python's own rule needs to start a full pass
        Cycle()
    assert gc.get_stats()[2]["collections"] == full_passes


def test_survivors_of_a_full_pass_are_frozen(restored_gc: None) -> None:
    gcpolicy.settle()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    kept = [[i] for i in range(1000)]  # made since: tracked until a full pass, then frozen
    gc.collect(1)
    assert gc.get_freeze_count() == frozen
    gc.collect(2)
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_timed_passes_free_cycles_and_the_thaw_lets_frozen_ones_go(restored_gc: None) -> None:
    gcpolicy.settle()
    frozen_cycle = Cycle()
    gc.collect()  # frozen_cycle survives: frozen
    gone = weakref.ref(frozen_cycle)
    del frozen_cycle  # garbage now, but frozen: no pass can free it until thawed
    young_cycle = weakref.ref(Cycle())  # garbage in the young generation

    async def passes(count: int, thaw_every: float) -> None:
        before = gc.get_stats()[2]["collections"]
        task = asyncio.create_task(gcpolicy.run_full_passes(every=0.01, thaw_every=thaw_every))
        while gc.get_stats()[2]["collections"] < before + count:
            await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(asyncio.wait_for(passes(2, thaw_every=3600), 10))
    assert young_cycle() is None
    assert gone() is not None  # frozen: not thawed yet
    asyncio.run(asyncio.wait_for(passes(1, thaw_every=0.01), 10))
    assert gone() is None
    assert gc.get_freeze_count() > 0  # the thawed pass froze what survived it again
