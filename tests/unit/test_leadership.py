"""Leadership among replicas in one process: the holder runs the loops, fenced; another
incarnation of the same replica waits for the lease to lapse instead of inheriting it."""

import asyncio
from pathlib import Path

from shoal.controllers.leadership import Leadership
from shoal.store.store import FENCE, Store

TTL = 0.9


async def wait_for(condition: object, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_one_replica_leads_and_a_second_incarnation_waits_for_the_lease(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    seen: list[object] = []

    async def loop() -> None:
        seen.append(FENCE.get())  # the fence the loop's writes carry
        await asyncio.Event().wait()

    async def scenario() -> None:
        first = Leadership(store, lambda: [loop()], "r", "127.0.0.1:1", ttl=TTL)
        running = asyncio.create_task(first.run())
        await wait_for(lambda: first.leading and seen)
        assert seen == [(first.holder, first.epoch)]
        again = Leadership(store, lambda: [loop()], "r", "127.0.0.1:1", ttl=TTL)
        rival = asyncio.create_task(again.run())
        await asyncio.sleep(TTL)
        assert first.leading and not again.leading, "a same-named replica inherits nothing"
        running.cancel()  # stops: gives the lease up, and the other takes it at once
        await wait_for(lambda: again.leading)
        assert again.epoch == 2 and seen[-1] == (again.holder, 2)
        rival.cancel()
        await asyncio.gather(running, rival, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        store.close()
