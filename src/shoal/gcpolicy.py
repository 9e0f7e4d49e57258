"""When the cyclic garbage collector runs in the long-lived processes (controller, agents).

A full pass stops the process and walks every object the collector tracks. With a thousand
agents' connections and watches that is hundreds of thousands of objects, and Python starts a
full pass whenever a quarter more objects reached the old generation: every few seconds under
load, each a pause of 50 to 400 ms that every request in flight waits out.

So: what exists once the process has started, and what survives a full pass, is frozen out of
the passes to come (it is long-lived: connections, watches, caches). Full passes no longer start
on their own; they come on a timer, and each walks only what was made since the last. Young
passes keep Python's default sizes: they are short, and they free most cyclic garbage. Once an
hour the frozen objects are let back in, so that cycles among them that became garbage (a
connection closed since) are freed after all.
"""

import asyncio
import gc

FULL_PASS_SECONDS = 300.0
THAW_SECONDS = 3600.0
# Python counts young passes to decide on a full one; this many never comes (27 hours of young
# passes at ten a second), so full passes come from run_full_passes alone.
NEVER = 1_000_000


def settle() -> None:
    """Freeze what exists now and take automatic full passes away. Call once startup is done."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(700, 10, NEVER)
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


async def run_full_passes(
    every: float = FULL_PASS_SECONDS, thaw_every: float = THAW_SECONDS
) -> None:
    """A full pass every `every` seconds (its survivors frozen), and one over everything, frozen
    objects included, every `thaw_every` seconds."""
    since_thaw = 0.0
    while True:
        await asyncio.sleep(every)
        since_thaw += every
        if since_thaw >= thaw_every:
            since_thaw = 0.0
            gc.unfreeze()
        gc.collect()
