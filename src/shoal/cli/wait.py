"""Waiting for objects to reach a state, through the watch API, with a live status line.

One loop serves every `--wait`: keep the set of objects a field selector matches, starting
from a list (or from an object just written and its resourceVersion), apply watch events to
it, and ask a judge after every change whether we are done, failed, or what to show. A watch
stream that ends is resumed from the last resourceVersion seen; a 410 Gone means that version
is too old to replay, so the set is listed afresh.
"""

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console
from rich.status import Status
from rich.text import Text

from shoal.cli.common import CliError
from shoal.client import Client, Obj
from shoal.errors import Gone, Unavailable

Key = tuple[str, str]
Objects = dict[Key, Obj]


@dataclass(frozen=True)
class Verdict:
    status: str
    done: bool = False
    error: str | None = None


Judge = Callable[[Objects], Verdict]


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


class Progress:
    """A spinner with a status line on a terminal; plain lines on stderr otherwise."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.last = ""
        self.tty = sys.stderr.isatty()
        self._status: Status | None = None

    def __enter__(self) -> "Progress":
        if self.tty:
            console = Console(file=sys.stderr, highlight=False, markup=False)
            self._status = console.status(self.title)
            self._status.start()
        return self

    def update(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        line = f"{self.title}: {text}" if text else self.title
        if self._status is not None:
            self._status.update(Text(line, no_wrap=True, overflow="ellipsis"))
        else:
            print(line, file=sys.stderr, flush=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()


def relist(
    client: Client, plural: str, namespace: str | None, field_selector: str | None
) -> tuple[Objects, str]:
    listing = client.list(plural, namespace, fieldSelector=field_selector)
    items = {key_of(obj): obj for obj in listing.get("items") or []}
    return items, str((listing.get("metadata") or {}).get("resourceVersion") or "")


def _events(
    client: Client,
    plural: str,
    namespace: str | None,
    field_selector: str | None,
    rv: str,
    seconds: float,
) -> Iterator[Obj]:
    return client.watch(
        plural,
        namespace,
        resource_version=rv or None,
        timeout=max(1.0, seconds),
        fieldSelector=field_selector,
    )


def follow(
    client: Client,
    plural: str,
    namespace: str | None,
    *,
    field_selector: str | None,
    judge: Judge,
    timeout: float,
    title: str,
    initial: tuple[list[Obj], str] | None = None,
) -> Objects:
    """Watch until judge says done (return the objects) or failed / timed out (CliError)."""
    deadline = time.monotonic() + timeout
    if initial is None:
        objects, rv = relist(client, plural, namespace, field_selector)
    else:
        objects, rv = {key_of(o): o for o in initial[0]}, initial[1]
    with Progress(title) as progress:
        verdict = judge(objects)
        while True:
            progress.update(verdict.status)
            if verdict.error:
                raise CliError(verdict.error)
            if verdict.done:
                return objects
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CliError(f"timed out after {timeout:g}s {title}: {verdict.status}")
            started = time.monotonic()
            try:
                stream = _events(client, plural, namespace, field_selector, rv, remaining)
                try:
                    for event in stream:
                        obj = event.get("object") or {}
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        if event.get("type") == "DELETED":
                            objects.pop(key_of(obj), None)
                        elif event.get("type") in ("ADDED", "MODIFIED"):
                            objects[key_of(obj)] = obj
                        verdict = judge(objects)
                        progress.update(verdict.status)
                        if verdict.done or verdict.error or time.monotonic() >= deadline:
                            break
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
            except Gone:
                objects, rv = relist(client, plural, namespace, field_selector)
            except Unavailable as error:
                progress.update(f"{verdict.status} (reconnecting: {error})")
                time.sleep(1.0)
            if time.monotonic() - started < 0.5:
                time.sleep(0.2)  # a stream that ends at once must not become a busy loop
            verdict = judge(objects)


# -- judges ------------------------------------------------------------------------------


def phase_text(vm: Obj) -> str:
    status = vm.get("status") or {}
    phase = status.get("phase") or "Pending"
    if vm.get("metadata", {}).get("deletionTimestamp") and phase != "Terminating":
        phase = f"{phase} (deleting)"
    message = status.get("message") or ""
    return f"{phase}: {message}" if message else phase


def vm_failure(vm: Obj) -> str:
    status = vm.get("status") or {}
    name = vm["metadata"]["name"]
    reason = status.get("reason") or "Failed"
    message = status.get("message") or "no message"
    return f"VM {name} failed: {reason}: {message}"


def vm_reaches(name: str, phase: str, *, deleted_ok: bool = False) -> Judge:
    """Done when the VM's phase is `phase` (and its status is for the current spec)."""

    def judge(objects: Objects) -> Verdict:
        vm = next(iter(objects.values()), None)
        if vm is None:
            if deleted_ok:
                return Verdict("deleted", done=True)
            return Verdict("deleted", error=f"VM {name} was deleted")
        status = vm.get("status") or {}
        current = status.get("phase") or "Pending"
        observed = int(status.get("observedGeneration") or 0)
        generation = int(vm["metadata"].get("generation") or 0)
        fresh = observed == 0 or observed >= generation
        if current == phase and fresh:
            return Verdict(phase_text(vm), done=True)
        if current == "Failed":
            return Verdict(phase_text(vm), error=vm_failure(vm))
        return Verdict(phase_text(vm))

    return judge


def all_gone(describe: Callable[[Objects], str], done: str = "gone") -> Judge:
    """Done when no object is left."""

    def judge(objects: Objects) -> Verdict:
        if not objects:
            return Verdict(done, done=True)
        return Verdict(describe(objects))

    return judge
