"""`shoal port-forward` and `shoal vnc`: local listeners whose connections are tunneled to a VM's
ports or display, through the controller and the VM's agent (no port is opened on any host)."""

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Annotated

import typer

from shoal.cli.common import CliError, ContextOpt, NamespaceOpt, connect, load_context
from shoal.tunnel.client import Endpoint, Kind, carry_stdio, serve_port

ADDRESS_HELP = "Local address to listen on (loopback by default: only this machine reaches it)."
SPEC = re.compile(r"^(?:(\d*):)?(\d+)$")


@dataclass(frozen=True)
class Forward:
    local: int  # 0: any free port
    remote: int


def parse_forward(text: str) -> Forward:
    """`REMOTE` (same local port), `LOCAL:REMOTE`, or `:REMOTE` (any free local port)."""
    match = SPEC.match(text.strip())
    if not match:
        raise CliError(f"{text!r}: expected [LOCAL:]REMOTE, e.g. 8080:80 or :22 or 5432")
    local_text, remote_text = match.groups()
    remote = int(remote_text)
    local = remote if local_text is None else int(local_text or 0)
    for port, side in ((remote, "remote"), (local, "local")):
        if not (0 if side == "local" else 1) <= port <= 65535:
            raise CliError(f"{text!r}: {side} port {port} is not a TCP port")
    return Forward(local, remote)


def endpoint(context: str | None, namespace: str | None, vm: str) -> Endpoint:
    _, ctx = load_context(context)
    return Endpoint(ctx.server, ctx.token, ctx.caCert, namespace or ctx.namespace or "default", vm)


def check_running(context: str | None, namespace: str | None, vm: str) -> dict[str, object]:
    """The VM, if it exists and runs; a clear error before any listener is opened otherwise."""
    with connect(context, namespace) as target:
        obj = target.client.get("virtualmachines", vm, target.namespace)
    phase = (obj.get("status") or {}).get("phase")
    if phase not in ("Running", "Starting", "Suspended"):
        raise CliError(f"VirtualMachine {vm} is {phase or 'Pending'}, not running")
    return obj


def _report(text: str) -> None:
    typer.echo(text, err=True)


async def _listen(
    where: Endpoint, kind: Kind, forwards: list[Forward], address: str, vnc: bool
) -> None:
    servers = []
    try:
        for forward in forwards:
            try:
                server = await serve_port(
                    where, kind, forward.remote or None, address, forward.local, _report
                )
            except OSError as error:
                raise CliError(
                    f"cannot listen on {address}:{forward.local}: {error.strerror}"
                ) from None
            servers.append(server)
            port = server.sockets[0].getsockname()[1]
            if vnc:
                typer.echo(f"VNC of {where.vm}: vnc://{address}:{port}  (Ctrl-C ends it)")
            else:
                typer.echo(f"Forwarding from {address}:{port} -> {where.vm}:{forward.remote}")
        await asyncio.gather(*(server.serve_forever() for server in servers))
    finally:
        for server in servers:
            server.close()


def register(app: typer.Typer) -> None:
    @app.command("port-forward")
    def port_forward(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        ports: Annotated[
            list[str],
            typer.Argument(
                help="[LOCAL:]REMOTE port pairs; REMOTE alone uses the same local port, "
                ":REMOTE any free one.",
                show_default=False,
            ),
        ],
        address: Annotated[str, typer.Option(help=ADDRESS_HELP)] = "127.0.0.1",
        stdio: Annotated[
            bool,
            typer.Option(
                "--stdio",
                help="Carry one connection to REMOTE on stdin and stdout (ssh's ProxyCommand).",
            ),
        ] = False,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Forward local ports to a VM's ports through the controller (no host port is opened)."""
        forwards = [parse_forward(text) for text in ports]
        where = endpoint(context, namespace, name)
        if stdio:
            if len(forwards) != 1:
                raise CliError("--stdio carries exactly one port")
            asyncio.run(carry_stdio(where, forwards[0].remote))
            return
        check_running(context, namespace, name)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_listen(where, "portforward", forwards, address, vnc=False))

    @app.command()
    def vnc(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        port: Annotated[int, typer.Option(min=0, max=65535, help="Local port; 0: any.")] = 0,
        address: Annotated[str, typer.Option(help=ADDRESS_HELP)] = "127.0.0.1",
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Serve a VM's screen on a local port for any VNC viewer (prints the vnc:// address)."""
        check_running(context, namespace, name)
        where = endpoint(context, namespace, name)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_listen(where, "vnc", [Forward(port, 0)], address, vnc=True))
