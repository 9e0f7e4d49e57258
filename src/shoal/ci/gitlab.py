"""The GitLab Runner custom executor driver: `shoal gitlab-executor config|prepare|run|cleanup`.

gitlab-runner calls the four stages as separate processes, with the job's variables as
CUSTOM_ENV_* in the environment. One VM per job, named from CI_JOB_ID, so every stage finds it
again without any state on the runner's machine:

- config prints the JSON gitlab-runner reads (builds_dir, cache_dir, hostname, driver).
- prepare deploys the job's ephemeral VM and waits until its guest answers. gitlab-runner retries
  prepare (up to three times) without a cleanup in between, so prepare is idempotent by job id: a
  healthy VM of that name is reused, a failed one is deleted and made again under the same name.
- run SCRIPT STAGE feeds the script gitlab-runner wrote into the guest and runs it there, with its
  output live. The script's non-zero exit is $BUILD_FAILURE_EXIT_CODE; anything failing around it
  (no VM, guest unreachable) is $SYSTEM_FAILURE_EXIT_CODE.
- cleanup deletes the VM (already gone is fine).

The VM carries a lease (spec.leaseSeconds, default 10 minutes). Every stage renews it when it
starts and ends, and every third of it while it runs; between stages nobody does. If the runner's
machine dies mid-job, the controller's garbage collector deletes the VM once the lease runs out.
"""

import asyncio
import contextlib
import fnmatch
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from shoal import __version__
from shoal.cli.common import CliError, Target
from shoal.cli.portforward import endpoint
from shoal.cli.run import LeaseKeeper
from shoal.cli.vm import wait_phase
from shoal.cli.wait import all_gone, follow
from shoal.client import resource_path
from shoal.errors import AlreadyExists, ApiError, NotFound
from shoal.model.meta import API_VERSION
from shoal.tunnel.client import Endpoint
from shoal.tunnel.execclient import ExecResult, execute

DRIVER = "shoal"
CONFIG_ENV = "SHOAL_GITLAB_CONFIG"
# When gitlab-runner did not say (the driver run by hand): its own defaults.
DEFAULT_BUILD_FAILURE = 1
DEFAULT_SYSTEM_FAILURE = 2
LABEL_PREFIX = "gitlab.shoal.dev/"
# Every stage gitlab-runner may pass to run_exec (step_script replaced build_script in 12.x).
STAGES = (
    "prepare_script",
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "step_script",
    "build_script",
    "after_script",
    "archive_cache",
    "archive_cache_on_failure",
    "upload_artifacts_on_success",
    "upload_artifacts_on_failure",
    "cleanup_file_variables",
)
# How failed, stopped or vanishing VMs look: prepare makes these again rather than wait on them.
DEAD_PHASES = ("Failed", "Suspended", "Stopping", "Stopped", "Terminating")
UNMAPPED = ("error", "default", "reference")
NAME_CHARS = re.compile(r"[^a-z0-9-]+")
SHEBANG = re.compile(rb"^#!\s*(\S+)(?:\s+(\S+))?")


class DriverError(Exception):
    """Anything but the job's own script failed: exit $SYSTEM_FAILURE_EXIT_CODE."""


@dataclass
class Settings:
    """What the driver is told, from the YAML file and then the flags (flags win)."""

    context: str | None = None
    namespace: str | None = None
    default_image: str | None = None
    images: dict[str, str] = field(default_factory=dict)  # job image (or glob) -> shoal image
    unmapped_image: str = "error"  # error | default | reference
    vmconfig: str | None = None
    access_secret: str | None = None
    access_user: str | None = None
    cpu: int | None = None
    memory: str | None = None
    disk: str | None = None
    selector: dict[str, str] = field(default_factory=dict)
    builds_dir: str = "/builds"
    cache_dir: str = "/cache"
    shell: str = "auto"  # auto: the script's #! line, else sh
    name_prefix: str = "gitlab-job-"
    lease: int = 600
    boot_timeout: float = 600.0

    def check(self) -> "Settings":
        if self.unmapped_image not in UNMAPPED:
            raise CliError(f"unmapped_image {self.unmapped_image!r}: one of {', '.join(UNMAPPED)}")
        if self.lease < 30:
            raise CliError(f"lease {self.lease}: at least 30 seconds")
        for path in (self.builds_dir, self.cache_dir):
            if not path.startswith("/"):
                raise CliError(f"{path!r}: builds_dir and cache_dir must be absolute paths")
        return self


def load_settings(path: Path | None, overrides: Mapping[str, Any]) -> Settings:
    """Settings from the YAML file at path (if any), then the overrides that are not None."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise CliError(f"{path}: {error.strerror or error}") from None
        except yaml.YAMLError as error:
            raise CliError(f"{path}: not YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise CliError(f"{path}: expected a mapping of settings")
        data = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CliError(f"{path}: unknown settings {', '.join(unknown)}")
    for key, value in overrides.items():
        if value is None or value == {} or value == []:
            continue
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    for key in ("images", "selector"):
        if not isinstance(data.get(key, {}), dict):
            raise CliError(f"{key}: expected a mapping")
        data[key] = {str(k): str(v) for k, v in (data.get(key) or {}).items()}
    try:
        return Settings(**data).check()
    except TypeError as error:
        raise CliError(f"settings: {error}") from None


# --- what the job's variables decide (pure) ---


def job_var(env: Mapping[str, str], name: str) -> str:
    """A job variable as gitlab-runner hands it to a driver: CUSTOM_ENV_<name>."""
    return env.get(f"CUSTOM_ENV_{name}", "")


def vm_name(settings: Settings, env: Mapping[str, str]) -> str:
    job = job_var(env, "CI_JOB_ID")
    if not job:
        raise DriverError("CUSTOM_ENV_CI_JOB_ID is not set: is this gitlab-runner calling?")
    name = NAME_CHARS.sub("-", f"{settings.name_prefix}{job}".lower()).strip("-")
    return name[:63].rstrip("-")


def job_labels(env: Mapping[str, str]) -> dict[str, str]:
    labels = {"shoal.dev/gitlab": "true"}
    for var, key in (
        ("CI_PROJECT_ID", "project-id"),
        ("CI_PIPELINE_ID", "pipeline-id"),
        ("CI_JOB_ID", "job-id"),
    ):
        if value := job_var(env, var):
            labels[LABEL_PREFIX + key] = value
    return labels


def choose_image(settings: Settings, job_image: str) -> str | None:
    """The shoal image for the job's `image:`; None leaves it to the VMConfig."""
    if job_image:
        if job_image in settings.images:
            return settings.images[job_image]
        for pattern, image in settings.images.items():
            if fnmatch.fnmatchcase(job_image, pattern):
                return image
        if settings.unmapped_image == "reference":
            return job_image
        if settings.unmapped_image == "error":
            known = ", ".join(settings.images) or "none"
            raise DriverError(
                f"job image {job_image!r} is not in the image mapping (mapped: {known})"
            )
    if settings.default_image:
        return settings.default_image
    if settings.vmconfig:
        return None
    raise DriverError("no image: the job names none and no default_image or vmconfig is set")


def vm_body(settings: Settings, env: Mapping[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"ephemeral": True, "leaseSeconds": settings.lease}
    image = choose_image(settings, job_var(env, "CI_JOB_IMAGE"))
    if image:
        spec["image"] = image
    if settings.vmconfig:
        spec["config"] = settings.vmconfig
    for key in ("cpu", "memory", "disk"):
        if (value := getattr(settings, key)) is not None:
            spec[key] = value
    if settings.selector:
        spec["nodeSelector"] = dict(settings.selector)
    access = {"secretRef": {"name": settings.access_secret}} if settings.access_secret else {}
    if settings.access_user:
        access["user"] = settings.access_user  # type: ignore[assignment]
    if access:
        spec["access"] = access
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": vm_name(settings, env), "labels": job_labels(env)},
        "spec": spec,
    }


def config_output(settings: Settings, env: Mapping[str, str]) -> dict[str, Any]:
    """The JSON config_exec prints."""
    out: dict[str, Any] = {
        "builds_dir": settings.builds_dir,
        "cache_dir": settings.cache_dir,
        "builds_dir_is_shared": False,
        "driver": {"name": DRIVER, "version": __version__},
    }
    if job_var(env, "CI_JOB_ID"):
        out["hostname"] = vm_name(settings, env)
    return out


@dataclass(frozen=True)
class ExitCodes:
    build_failure: int
    system_failure: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ExitCodes":
        def code(name: str, default: int) -> int:
            try:
                return int(env[name])
            except (KeyError, ValueError):
                return default

        return cls(
            code("BUILD_FAILURE_EXIT_CODE", DEFAULT_BUILD_FAILURE),
            code("SYSTEM_FAILURE_EXIT_CODE", DEFAULT_SYSTEM_FAILURE),
        )

    def for_script(self, exit_code: int) -> int:
        return 0 if exit_code == 0 else self.build_failure


def interpreter(settings: Settings, script: bytes) -> str:
    """The guest program that runs the script: the setting, else the script's #! line."""
    if settings.shell != "auto":
        return settings.shell
    match = SHEBANG.match(script)
    if not match:
        return "sh"
    program, argument = match.group(1).decode(), (match.group(2) or b"").decode()
    if program.endswith("/env") and argument:
        return argument
    return program


def guest_command(shell: str, builds_dir: str, cache_dir: str) -> list[str]:
    """Reads the script from stdin into a file in the guest, runs it with shell (its stdin
    empty, as gitlab-runner's own executors do), removes the file, exits with the script's
    code. builds_dir and cache_dir are made first."""
    wrapper = (
        f"mkdir -p {shlex.quote(builds_dir)} {shlex.quote(cache_dir)} || exit 1; "
        'f=$(mktemp) || exit 1; trap \'rm -f "$f"\' EXIT; cat > "$f" || exit 1; '
        f'{shell} "$f" < /dev/null'
    )
    return ["sh", "-c", wrapper]


# --- the stages ---


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _renew(target: Target, name: str) -> None:
    target.client.request("POST", resource_path("virtualmachines", target.namespace, name, "renew"))


def _delete(target: Target, name: str) -> None:
    with contextlib.suppress(NotFound):
        target.client.request("DELETE", resource_path("virtualmachines", target.namespace, name))


def _wait_gone(target: Target, name: str, timeout: float) -> None:
    follow(
        target.client,
        "virtualmachines",
        target.namespace,
        field_selector=f"metadata.name={name}",
        judge=all_gone(lambda objects: "deleting"),
        timeout=timeout,
        title=f"waiting for the old VM {name} to go",
    )


def _get(target: Target, name: str) -> dict[str, Any] | None:
    try:
        return target.client.get("virtualmachines", name, target.namespace)
    except NotFound:
        return None


def _phase(vm: Mapping[str, Any]) -> str:
    return str((vm.get("status") or {}).get("phase") or "Pending")


def _job_vm(target: Target, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The job's VM: the one already there if it is alive, else a new one (same name)."""
    name = body["metadata"]["name"]
    for _ in range(5):
        vm = _get(target, name)
        if vm is not None:
            dying = vm["metadata"].get("deletionTimestamp") or _phase(vm) in DEAD_PHASES
            if not dying:
                _say(f"shoal: reusing VM {name} ({_phase(vm)}), made by an earlier attempt")
                return vm
            _say(f"shoal: VM {name} from an earlier attempt is {_phase(vm)}: making it again")
            _delete(target, name)
            _wait_gone(target, name, timeout)
        try:
            vm = target.client.create("virtualmachines", body, target.namespace)
        except AlreadyExists:
            continue  # another attempt made it in between: look again
        _say(f"shoal: deployed VM {name} (image {vm['spec'].get('image') or '(from VMConfig)'})")
        return vm
    raise DriverError(f"VM {name} keeps coming back while it is deleted")


def _probe(guest: Endpoint, settings: Settings, deadline: float) -> None:
    """Waits until the guest runs a command, and makes builds_dir and cache_dir there."""
    command = guest_command("true", settings.builds_dir, settings.cache_dir)
    errors = bytearray()
    while True:
        errors.clear()
        result = asyncio.run(execute(guest, command, stdout=_discard, stderr=errors.extend))
        if result.exit_code == 0:
            return
        if result.exit_code is not None:
            said = errors.decode(errors="replace").strip() or f"exit {result.exit_code}"
            raise DriverError(f"cannot make {settings.builds_dir} in the guest: {said}")
        if time.monotonic() > deadline:
            raise DriverError(f"the guest did not answer: {result.error}")
        _say(f"shoal: waiting for the guest to answer ({result.error})")
        time.sleep(2)


def _discard(data: bytes) -> None:
    pass


def prepare(target: Target, settings: Settings, env: Mapping[str, str]) -> None:
    body = vm_body(settings, env)
    name = body["metadata"]["name"]
    deadline = time.monotonic() + settings.boot_timeout
    vm = _job_vm(target, body, settings.boot_timeout)
    try:
        with LeaseKeeper(target.client, target.namespace, name, settings.lease):
            _renew(target, name)
            try:
                wait_phase(target, vm, "Running", max(1.0, deadline - time.monotonic()))
            except CliError as error:
                raise DriverError(f"VM {name} did not come up: {error}") from None
            _probe(endpoint(target.context, target.namespace, name), settings, deadline)
            _renew(target, name)
    except BaseException:
        # A VM that never ran is no use to a retry either; a running one is left for it.
        current = _get(target, name)
        if current is None or _phase(current) != "Running":
            _say(f"shoal: deleting VM {name}")
            _delete(target, name)
        raise
    _say(f"shoal: VM {name} is ready")


class Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted()


def _echo(stream: Any) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()

    return write


def run_stage(
    target: Target, settings: Settings, env: Mapping[str, str], script: Path, stage: str
) -> int:
    """The script's exit code (0 or not); DriverError when it could not run."""
    name = vm_name(settings, env)
    try:
        content = script.read_bytes()
    except OSError as error:
        raise DriverError(f"{script}: {error.strerror or error}") from None
    vm = _get(target, name)
    if vm is None:
        raise DriverError(f"VM {name} is gone (did prepare run? did its lease run out?)")
    if _phase(vm) != "Running":
        raise DriverError(f"VM {name} is {_phase(vm)}, not Running")
    command = guest_command(interpreter(settings, content), settings.builds_dir, settings.cache_dir)

    async def stdin() -> Any:
        yield content

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with LeaseKeeper(target.client, target.namespace, name, settings.lease):
            _renew(target, name)
            guest = endpoint(target.context, target.namespace, name)
            result: ExecResult = asyncio.run(
                execute(
                    guest,
                    command,
                    stdout=_echo(sys.stdout),
                    stderr=_echo(sys.stderr),
                    stdin=stdin(),
                )
            )
            _renew(target, name)
    except Interrupted:
        raise DriverError(f"stage {stage} was stopped (SIGTERM)") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if result.exit_code is None:
        raise DriverError(f"stage {stage}: {result.error or 'the guest could not be reached'}")
    return result.exit_code


def cleanup(target: Target, settings: Settings, env: Mapping[str, str]) -> None:
    name = vm_name(settings, env)
    _delete(target, name)
    _say(f"shoal: deleted VM {name}")


def write_build_exit_code(env: Mapping[str, str], code: int) -> None:
    """gitlab-runner 17+ reads the script's own exit code from $BUILD_EXIT_CODE_FILE when it is
    set (for allow_failure:exit_codes); older runners do not set it."""
    path = env.get("BUILD_EXIT_CODE_FILE")
    if path:
        try:
            Path(path).write_text(f"{code}\n")
        except OSError as error:
            _say(f"shoal: cannot write BUILD_EXIT_CODE_FILE {path}: {error}")


def environment() -> dict[str, str]:
    return dict(os.environ)


def failure(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return error.message
    return str(error)
