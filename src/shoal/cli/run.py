"""`shoal run`: one job in a fresh VM. Deploy an ephemeral VM, wait until it runs, copy files in,
run the command with its output live, copy files out (also when the command failed), delete the
VM, and exit with the command's exit code.

The VM carries a lease (spec.leaseSeconds) that this command renews while it runs; if it is
killed, loses its connection or the machine it runs on dies, the controller's garbage collector
deletes the VM once the lease runs out. Nothing is left behind either way.
"""

import asyncio
import os
import shlex
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Annotated

import typer

from shoal.cli import vmspec
from shoal.cli.common import CliError, ContextOpt, NamespaceOpt, Target, connect
from shoal.cli.parse import parse_duration
from shoal.cli.portforward import endpoint
from shoal.cli.vm import wait_phase
from shoal.client import Client, resource_path
from shoal.errors import ApiError, NotFound
from shoal.model.meta import API_VERSION
from shoal.tunnel.client import Endpoint
from shoal.tunnel.execclient import ExecResult, execute

EXIT_TIMEOUT = 124  # the command ran past --timeout (as timeout(1) says)
EXIT_INFRA = 125  # the VM did not boot, a copy failed, the guest could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM
CHUNK = 256 * 1024


class JobError(Exception):
    """Anything but the job itself failed; exits EXIT_INFRA with the message."""


class Interrupted(Exception):
    pass


def _split(value: str, flag: str, local_first: bool) -> tuple[Path, PurePosixPath]:
    first, colon, second = value.partition(":")
    if not colon or not first or not second:
        raise CliError(
            f"{flag} {value!r}: give {'LOCAL:REMOTE' if local_first else 'REMOTE:LOCAL'}"
        )
    local, remote = (first, second) if local_first else (second, first)
    return Path(local), PurePosixPath(remote)


class LeaseKeeper:
    """Renews the VM's lease every third of it, in a thread, until stopped."""

    def __init__(self, client: Client, namespace: str, name: str, lease: int) -> None:
        self.client, self.namespace, self.name, self.lease = client, namespace, name, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        path = resource_path("virtualmachines", self.namespace, self.name, "renew")
        while not self._stop.wait(self.lease / 3):
            try:
                self.client.request("POST", path)
            except NotFound:
                return
            except Exception as error:  # a lost connection: the next round tries again
                print(f"shoal: cannot renew the lease of VM {self.name}: {error}", file=sys.stderr)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk


def _collect(sink: bytearray) -> Callable[[bytes], None]:
    return sink.extend


def _echo_err(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


def _echo_out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _guest(
    guest: Endpoint,
    command: list[str],
    stdout: Callable[[bytes], None],
    stderr: Callable[[bytes], None],
    stdin: AsyncIterator[bytes] | None = None,
) -> ExecResult:
    return asyncio.run(execute(guest, command, stdout=stdout, stderr=stderr, stdin=stdin))


def copy_in(target_endpoint: Endpoint, local: Path, remote: PurePosixPath) -> None:
    """local (a file or a directory) becomes remote in the guest, through tar over exec."""
    if not local.exists():
        raise CliError(f"--copy-in {local}: no such file or directory")
    with tempfile.TemporaryDirectory(prefix="shoal-run-") as tmp:
        archive = Path(tmp) / "in.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(local, arcname=remote.name)
        parent = shlex.quote(str(remote.parent))
        errors = bytearray()
        result = _guest(
            target_endpoint,
            ["sh", "-c", f"mkdir -p {parent} && tar -x -f - -C {parent}"],
            stdout=_echo_err,
            stderr=_collect(errors),
            stdin=_file_chunks(archive),
        )
    _check(result, f"--copy-in {local}:{remote}", errors)


def copy_out(target_endpoint: Endpoint, remote: PurePosixPath, local: Path) -> None:
    """remote (a file or a directory in the guest) becomes local, through tar over exec."""
    with tempfile.TemporaryDirectory(prefix="shoal-run-") as tmp:
        archive = Path(tmp) / "out.tar"
        errors = bytearray()
        with archive.open("wb") as out:

            def write(data: bytes) -> None:
                out.write(data)

            result = _guest(
                target_endpoint,
                ["tar", "-c", "-f", "-", "-C", str(remote.parent), remote.name],
                stdout=write,
                stderr=_collect(errors),
            )
        _check(result, f"--copy-out {remote}:{local}", errors)
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
        destination = local / remote.name if local.is_dir() else local
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        shutil.move(str(unpacked / remote.name), destination)


def _check(result: ExecResult, what: str, errors: bytearray) -> None:
    if result.exit_code is None:
        raise JobError(f"{what}: {result.error}")
    if result.exit_code != 0:
        said = errors.decode(errors="replace").strip().splitlines()
        raise JobError(f"{what} failed: {said[-1] if said else f'exit {result.exit_code}'}")


def _deploy(target: Target, spec: dict[str, object], lease: int) -> dict[str, object]:
    body = {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"generateName": "run-", "labels": {"shoal.dev/run": "true"}},
        "spec": {**spec, "ephemeral": True, "leaseSeconds": lease},
    }
    return target.client.create("virtualmachines", body, target.namespace)


INTERRUPT_GRACE = 30.0  # seconds the VM's deletion may take after Ctrl-C before we just exit


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C or SIGTERM: unwind now (the VM is deleted on the way out). Should the way out hang,
    exit anyway after INTERRUPT_GRACE: the VM's lease ends it then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watchdog = threading.Timer(INTERRUPT_GRACE, os._exit, (EXIT_INTERRUPTED,))
    watchdog.daemon = True
    watchdog.start()
    raise Interrupted()


def run_job(
    target: Target,
    context: str | None,
    spec: dict[str, object],
    command: list[str],
    *,
    copies_in: list[tuple[Path, PurePosixPath]],
    copies_out: list[tuple[PurePosixPath, Path]],
    timeout: float | None,
    boot_timeout: float,
    lease: int,
) -> int:
    vm = _deploy(target, spec, lease)
    name = str(vm["metadata"]["name"])  # type: ignore[index]
    print(f"shoal run: VM {name}", file=sys.stderr, flush=True)
    # Our own handlers, not asyncio.run's (which only cancels the job and waits for it).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LeaseKeeper(target.client, target.namespace, name, lease):
            try:
                wait_phase(target, vm, "Running", boot_timeout)
            except CliError as error:
                raise JobError(f"VM {name} did not come up: {error}") from None
            guest = endpoint(context, target.namespace, name)
            for local, remote in copies_in:
                copy_in(guest, local, remote)
            code = _run_command(guest, command, timeout)
            for remote, local in copies_out:
                copy_out(guest, remote, local)
            return code
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INFRA
    except (KeyboardInterrupt, Interrupted):
        print("shoal run: interrupted; deleting the VM", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            target.client.request(
                "DELETE", resource_path("virtualmachines", target.namespace, name)
            )
        except NotFound:
            pass
        except ApiError as error:
            print(
                f"shoal run: VM {name} not deleted ({error.message}); its lease ends it",
                file=sys.stderr,
            )


def _run_command(guest: Endpoint, command: list[str], timeout: float | None) -> int:
    async def go() -> ExecResult:
        job = execute(guest, command, stdout=_echo_out, stderr=_echo_err)
        return await asyncio.wait_for(job, timeout)

    try:
        result = asyncio.run(go())
    except TimeoutError:
        print(f"shoal run: the command ran past --timeout ({timeout:.0f}s)", file=sys.stderr)
        return EXIT_TIMEOUT
    if result.exit_code is None:
        raise JobError(result.error)
    return result.exit_code


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        command: Annotated[
            list[str],
            typer.Argument(help="The command and its arguments, after --.", show_default=False),
        ],
        image: vmspec.ImageOpt = None,
        config: Annotated[
            str | None, typer.Option("--config", help="VMConfig to start from; flags override it.")
        ] = None,
        cpu: vmspec.CpuOpt = None,
        memory: vmspec.MemoryOpt = None,
        disk: vmspec.DiskOpt = None,
        selector: vmspec.SelectorOpt = None,
        access_secret: vmspec.AccessSecretOpt = None,
        access_user: vmspec.AccessUserOpt = None,
        env: vmspec.EnvOpt = None,
        env_secret: vmspec.EnvSecretOpt = None,
        copy_in_: Annotated[
            list[str] | None,
            typer.Option(
                "--copy-in",
                metavar="LOCAL:REMOTE",
                help="Copy a file or directory into the guest first (repeatable).",
                show_default=False,
            ),
        ] = None,
        copy_out_: Annotated[
            list[str] | None,
            typer.Option(
                "--copy-out",
                metavar="REMOTE:LOCAL",
                help="Copy a file or directory out of the guest after the command, failed or not (repeatable).",
                show_default=False,
            ),
        ] = None,
        timeout: Annotated[
            str | None,
            typer.Option(
                "--timeout",
                help="Kill the command after this long (e.g. 30m); exit 124.",
                show_default=False,
            ),
        ] = None,
        boot_timeout: Annotated[
            float, typer.Option("--boot-timeout", min=1, help="Seconds the VM may take to come up.")
        ] = 600.0,
        lease: Annotated[
            int,
            typer.Option(
                "--lease",
                min=10,
                help="Seconds the VM outlives this command if it dies (renewed while it runs).",
            ),
        ] = 60,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Run one command in a fresh ephemeral VM, then delete the VM. Exit code: the
        command's; 124 past --timeout; 125 when the VM did not boot, a copy failed or the
        guest could not be reached; 130 when interrupted."""
        if not image and not config:
            raise CliError("--image is required (unless --config names a VMConfig that sets it)")
        flags = vmspec.SpecFlags(
            image=image,
            cpu=cpu,
            memory=memory,
            disk=disk,
            selector=selector or [],
            access_secret=access_secret,
            access_user=access_user,
            env=env or [],
            env_secrets=env_secret or [],
        )
        spec = vmspec.build_spec(flags)
        if config:
            spec["config"] = config
        copies_in = [_split(v, "--copy-in", True) for v in copy_in_ or []]
        copies_out = [
            (r, loc) for loc, r in (_split(v, "--copy-out", False) for v in copy_out_ or [])
        ]
        deadline = float(parse_duration(timeout)) if timeout else None
        with connect(context, namespace) as target:
            code = run_job(
                target,
                context,
                spec,
                command,
                copies_in=copies_in,
                copies_out=copies_out,
                timeout=deadline,
                boot_timeout=boot_timeout,
                lease=lease,
            )
        raise typer.Exit(code)
