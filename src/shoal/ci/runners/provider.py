"""What a runner pool asks of a CI system. One module per CI system implements Provider; the
pool reconciler (reconciler.py) and the planner (plan.py) know nothing else about them.

Names: a runner VM is called `<pool>-<10 lower-case letters or digits>` in the pool's namespace,
and its runner on the CI side `<namespace>.<vm name>` (PoolIdentity), so either half finds the
other, and pools of the same name in two namespaces never take each other's runners.

Each CI system's module has `from_pool(identity, spec, credentials) -> Provider`: spec is the
pool's spec as a dict, credentials the decoded data of its credentials Secret; it raises
ProviderError("Invalid", ...) naming the key when the Secret lacks one.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

SUFFIX_LENGTH = 10


@dataclass(frozen=True)
class PoolIdentity:
    namespace: str
    pool: str

    def runner_name(self, vm_name: str) -> str:
        """The CI-side name of the runner that runs in vm_name."""
        return f"{self.namespace}.{vm_name}"

    def vm_name(self, runner_name: str) -> str | None:
        """The VM a CI-side runner of this pool runs in; None for another pool's or anyone's."""
        pattern = (
            rf"{re.escape(self.namespace)}\.({re.escape(self.pool)}-[a-z0-9]{{{SUFFIX_LENGTH}}})"
        )
        match = re.fullmatch(pattern, runner_name)
        return match.group(1) if match else None

    def owns(self, runner_name: str) -> bool:
        return self.vm_name(runner_name) is not None


class ProviderError(Exception):
    """The CI system could not be asked. reason is one word a pool condition carries:
    BadCredentials (401/403), Unreachable (no answer, 5xx), NotFound (the org, repo, queue or
    label does not exist), Invalid (the CI system refused what was sent)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def credential(credentials: Mapping[str, bytes], key: str) -> str:
    """One key of a pool's credentials Secret as text; ProviderError("Invalid") naming the key
    (never the value) when it is missing, empty or not UTF-8."""
    if key not in credentials:
        raise ProviderError("Invalid", f"credentials Secret has no key {key!r}")
    try:
        value = credentials[key].decode().strip()
    except UnicodeDecodeError:
        raise ProviderError("Invalid", f"credentials Secret key {key!r} is not UTF-8") from None
    if not value:
        raise ProviderError("Invalid", f"credentials Secret key {key!r} is empty")
    return value


@dataclass(frozen=True)
class QueuedJob:
    """A job waiting in the CI system for a runner of this pool."""

    id: str
    labels: frozenset[str] = frozenset()
    queued_at: float | None = None  # epoch seconds, when the CI system says


@dataclass(frozen=True)
class CiRunner:
    """A runner (GitHub runner, Jenkins node, Buildkite agent) of this pool that the CI system
    knows of (PoolIdentity.owns its name)."""

    name: str  # the CI-side name
    id: str
    online: bool
    busy: bool
    job_id: str | None = None  # the job it runs, when the CI system says


@dataclass(frozen=True)
class Registration:
    """What registering one runner gave: its id on the CI side (kept in the VM's annotations),
    and the environment the runner command needs. env values are credentials (a JIT config, an
    agent secret, an agent token): they go into a Secret, never into a VM's spec or argv."""

    id: str
    env: Mapping[str, str] = field(default_factory=dict)


class Provider(Protocol):
    # True: register() creates the runner on the CI side before its VM exists (GitHub JIT
    # runners, Jenkins nodes), so a VM whose runner is not listed has lost it. False: the runner
    # appears only once its program starts in the VM (Buildkite agents).
    registers_ahead: bool
    # True: every runner is started for one job (register's job argument) and takes no other.
    binds_jobs: bool
    # The shell command a runner VM's startup script runs when the pool gives none.
    default_command: str
    # Optional (a class attribute, read with getattr): seconds between syncs while a runner is
    # starting or idle, for CI systems that would hand a runner a second job (Jenkins).

    async def queued_jobs(self) -> list[QueuedJob]:
        """Jobs waiting that a runner of this pool can take (labels, queue)."""
        ...

    async def runners(self) -> list[CiRunner]:
        """The CI side's runners of this pool (PoolIdentity.owns their names)."""
        ...

    async def register(self, name: str, job: QueuedJob | None) -> Registration:
        """Create (or prepare) the runner with CI-side name `name`; job is set when
        binds_jobs."""
        ...

    async def claimed(self, runner: CiRunner) -> None:
        """Called once, when the runner is first seen busy: a CI system that would hand a
        runner a second job is told not to (Jenkins: the node is marked offline, so it ends
        its build and takes no other). Nothing for one-shot runners."""
        ...

    async def remove(self, runner: CiRunner) -> bool:
        """Remove the runner on the CI side. False when the CI system refuses because it is
        running a job (it then finishes it); a runner already gone counts as removed."""
        ...

    async def job_active(self, job_id: str) -> bool:
        """Whether a job is still queued or running (not finished, not cancelled)."""
        ...

    async def close(self) -> None: ...
