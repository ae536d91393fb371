"""The graceful stop of delivery: nothing more is claimed and no new send starts; each send in flight
finishes (within a bound), every outcome is written, and what was claimed but not sent is given back
at once, so neither a restart nor another node waits for its lease and nothing is sent twice. Only a
send cut off by the bound may be sent again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("listkeeper.delivery")


async def stop(run: asyncio.Task, bound: float, *, halt: Callable[[], None],
               flush: Callable[[], Awaitable[None]], give_back: Callable[[], int]) -> None:
    """Stop `run` (the scheduler's loop): `halt` it, wait at most `bound` seconds for it, write the
    outcomes it left (`flush`), then `give_back` its unsent claims (a blocking store call, in a thread)."""
    halt()
    try:
        async with asyncio.timeout(bound):
            await asyncio.shield(run)
    except TimeoutError:
        log.warning("deliveries still in flight after %s s at stop; they are sent again later", bound)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    except Exception:  # noqa: BLE001 - the stop goes on: outcomes and leases below
        log.exception("the delivery run failed while stopping")
    try:
        await flush()
    except Exception:  # noqa: BLE001
        log.exception("writing the last delivery outcomes failed; those deliveries are sent again")
    given = await asyncio.to_thread(give_back)
    if given:
        log.info("gave back %d claimed deliveries not sent before the stop", given)
