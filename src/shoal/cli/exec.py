"""`shoal exec VM [-i] [-t] -- COMMAND...`: run a command in a VM's guest, with its output live and
its exit code passed through.

Exit codes: the command's own; EXIT_GUEST_ACCESS (255, as ssh) when the guest could not be reached
or refused the VM's credentials; 1 when the exec could not start at all (no such VM, not Running,
not allowed)."""

import asyncio
import os
import shutil
import signal
import sys
import termios
import tty
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import typer

from shoal.cli.common import CliError, ContextOpt, NamespaceOpt
from shoal.cli.portforward import endpoint
from shoal.tunnel.client import stdin_chunks
from shoal.tunnel.execclient import ExecResult, execute

EXIT_GUEST_ACCESS = 255
CHUNK = 64 * 1024


async def window_sizes() -> AsyncIterator[tuple[int, int]]:
    """The terminal's size each time it changes (SIGWINCH)."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    loop.add_signal_handler(signal.SIGWINCH, changed.set)
    try:
        while True:
            await changed.wait()
            changed.clear()
            size = shutil.get_terminal_size()
            yield size.columns, size.lines
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


def _write(stream: int) -> Callable[[bytes], None]:
    out = sys.stdout.buffer if stream == 1 else sys.stderr.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    return write


def run_exec(
    context: str | None,
    namespace: str | None,
    vm: str,
    command: list[str],
    *,
    interactive: bool,
    terminal: bool,
) -> int:
    """Run the exec on this process's stdin, stdout and stderr; returns the exit code to use."""
    target = endpoint(context, namespace, vm)
    stdin_fd = sys.stdin.fileno()
    raw = terminal and os.isatty(stdin_fd)
    saved = termios.tcgetattr(stdin_fd) if raw else None
    size = shutil.get_terminal_size()

    async def go() -> ExecResult:
        return await execute(
            target,
            command,
            stdout=_write(1),
            stderr=_write(2),
            stdin=stdin_chunks() if interactive else None,
            tty=terminal,
            size=(size.columns, size.lines),
            resizes=window_sizes() if raw else None,
        )

    try:
        if raw:
            tty.setraw(stdin_fd)
        result = asyncio.run(go())
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
    if result.exit_code is not None:
        return result.exit_code
    typer.echo(f"error: {result.error}", err=True)
    return EXIT_GUEST_ACCESS if result.reason == "GuestAccessFailed" else 1


def register(app: typer.Typer) -> None:
    @app.command("exec")
    def exec_command(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        command: Annotated[
            list[str],
            typer.Argument(help="The command and its arguments, after --.", show_default=False),
        ],
        stdin: Annotated[
            bool, typer.Option("--stdin", "-i", help="Pass this terminal's stdin to the command.")
        ] = False,
        terminal: Annotated[
            bool,
            typer.Option("--tty", "-t", help="Run the command on a terminal (interactive shells)."),
        ] = False,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Run a command in a VM's guest over SSH, as the VM's spec.access says, with its output
        live and its exit code passed through (255: the guest could not be reached or refused the
        credentials; 1: the exec could not start)."""
        if not command:
            raise CliError("give the command after --, e.g. shoal exec ci-1 -- uname -a")
        try:
            code = run_exec(context, namespace, name, command, interactive=stdin, terminal=terminal)
        except KeyboardInterrupt:
            code = 130  # as shells say of a command ended by Ctrl-C
        raise typer.Exit(code)
