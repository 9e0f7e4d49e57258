"""The controller's garbage-collector settings: what survives a full pass is frozen out of the
passes to come, and let back in now and then."""

import asyncio
import gc
from collections.abc import Iterator

import pytest

from shoal.server import _freeze_survivors, settle_garbage_collector, thaw_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    while _freeze_survivors in gc.callbacks:
        gc.callbacks.remove(_freeze_survivors)
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_survivors_of_a_full_pass_are_frozen(restored_gc: None) -> None:
    settle_garbage_collector()
    settle_garbage_collector()  # twice (a test runs more than one controller): one callback
    assert gc.callbacks.count(_freeze_survivors) == 1
    assert gc.get_threshold() == (700, 10, 100)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    kept = [[i] for i in range(1000)]  # made since: tracked until a full pass, then frozen
    gc.collect(1)
    assert gc.get_freeze_count() == frozen
    gc.collect(2)
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_thaw_lets_frozen_objects_back_in(restored_gc: None) -> None:
    settle_garbage_collector()
    assert gc.get_freeze_count() > 0

    async def one_thaw() -> None:
        task = asyncio.create_task(thaw_garbage_collector(every=0.01))
        while gc.get_freeze_count() > 0:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(one_thaw(), 10))
    assert gc.get_freeze_count() == 0
