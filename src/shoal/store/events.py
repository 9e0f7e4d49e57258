"""Recording Events in the store: one object per (involved object, reason), counted on repeats."""

import logging

from shoal.errors import AlreadyExists, ApiError
from shoal.events import bump, new_event
from shoal.store.store import Obj, Store, Tx

log = logging.getLogger(__name__)


def upsert(tx: Tx, event: Obj) -> None:
    """Write an Event in tx: new, or counted onto the one of the same object and reason."""
    meta = event["metadata"]
    current = tx.get("Event", meta["namespace"], meta["name"])
    if current is None:
        tx.insert(event)
    else:
        tx.replace(bump(current, event))


def record(
    store: Store,
    involved: Obj,
    reason: str,
    message: str,
    *,
    type_: str = "Normal",
    source: str = "controller",
) -> None:
    """Record an Event; never fails the caller (an event is a report, not part of the change)."""
    event = new_event(involved, reason, message, type_=type_, source=source)
    meta = event["metadata"]
    try:
        with store.tx() as tx:
            upsert(tx, event)
    except (AlreadyExists, ApiError) as error:
        log.debug("event %s not recorded: %s", reason, error)
    except Exception:  # e.g. a busy database: the event is dropped, the change it reports stands
        log.warning("event %s for %s not recorded", reason, meta["name"], exc_info=True)
