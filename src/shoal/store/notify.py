"""Hearing other replicas' commits at once on PostgreSQL: every write transaction ends with a
NOTIFY on NOTIFY_CHANNEL carrying only its last resourceVersion (shoal.store.store), and a watch
hub LISTENs on a connection of its own and reads the change log as soon as a version it has not
seen is announced, instead of at its next poll. The poll stays, for whatever a notification
cannot carry (a listener reconnecting after the database restarted).
"""

import logging
import threading
from collections.abc import Callable

import psycopg
import sqlalchemy as sa

from shoal.store.store import NOTIFY_CHANNEL

log = logging.getLogger(__name__)
RECONNECT_SECONDS = 1.0
TICK = 0.5  # how often the listening thread looks whether it should stop


class Listener:
    """A thread that LISTENs and calls heard(rv) for each announced version."""

    def __init__(self, url: str, heard: Callable[[int], None]) -> None:
        parsed = sa.engine.make_url(url).set(drivername="postgresql")
        self._conninfo = parsed.render_as_string(hide_password=False)
        self._heard = heard
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * TICK)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=TICK):
                            if notice.payload.isdigit():
                                self._heard(int(notice.payload))
            except psycopg.Error as error:
                log.debug("LISTEN %s: %s; again in %ss", NOTIFY_CHANNEL, error, RECONNECT_SECONDS)
                self._stop.wait(RECONNECT_SECONDS)
