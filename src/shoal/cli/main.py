"""The `shoal` command: one sub-command group per noun, errors printed as `error: <message>`."""

import sys
from typing import Any, NoReturn

import httpx
import typer
from typer.core import TyperGroup

from shoal import __version__
from shoal.cli import (
    admin,
    console,
    context,
    events,
    gitlab,
    image,
    logs,
    namespace,
    node,
    portforward,
    registry,
    rolebinding,
    run,
    runnerpool,
    secret,
    serve,
    serviceaccount,
    ssh,
    token,
    usage,
    vm,
    vmconfig,
    vmpush,
    warmpool,
)
from shoal.cli import exec as exec_
from shoal.cli.common import CliError
from shoal.errors import ApiError
from shoal.tls import FingerprintMismatch

EXPECTED = (ApiError, CliError, FingerprintMismatch, httpx.HTTPError)


def error_text(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return error.message
    if isinstance(error, httpx.HTTPStatusError):
        return f"{error.request.url}: HTTP {error.response.status_code}"
    if isinstance(error, httpx.HTTPError):
        return f"cannot reach the server: {error}"
    return str(error)


def fail(error: BaseException) -> NoReturn:
    typer.echo(f"error: {error_text(error)}", err=True)
    raise typer.Exit(1)


class ShoalGroup(TyperGroup):
    """The root group: a server's 4xx or a client-side problem is one line, never a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except EXPECTED as error:
            fail(error)


app = typer.Typer(
    cls=ShoalGroup,
    name="shoal",
    help="shoal: ephemeral build VMs on a pool of hosts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shoal {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the client version and exit.",
        callback=_version,
        is_eager=True,
    ),
) -> None:
    """shoal: ephemeral build VMs on a pool of hosts."""


app.add_typer(context.app, name="context", help="Manage server contexts (server, token, CA).")
vmpush.register(vm.app)
app.add_typer(vm.app, name="vm", help="Deploy and manage VirtualMachines.")
app.add_typer(image.app, name="image", help="Manage VM images.")
app.add_typer(registry.app, name="registry", help="Log in to OCI registries.")
logs.register(app)
portforward.register(app)
ssh.register(app)
console.register(app)
exec_.register(app)
run.register(app)
app.add_typer(gitlab.app, name="gitlab-executor", help="GitLab Runner custom executor driver.")
app.add_typer(vmconfig.app, name="vmconfig", help="Manage VMConfigs (named VM templates).")
app.add_typer(runnerpool.app, name="runnerpool", help="CI runner pools: a fresh VM per queued job.")
app.add_typer(warmpool.app, name="warmpool", help="Warm pools: saved VMs a deploy resumes.")
app.add_typer(secret.app, name="secret", help="Manage Secrets: credentials for guests.")
app.add_typer(node.app, name="node", help="Inspect and manage nodes (hosts).")
app.add_typer(namespace.app, name="namespace", help="Manage namespaces.")
app.add_typer(serviceaccount.app, name="serviceaccount", help="Manage service accounts.")
app.add_typer(token.app, name="token", help="Create and revoke service-account tokens.")
app.add_typer(rolebinding.app, name="rolebinding", help="Grant roles in a namespace.")
app.command("events")(events.events)
app.command("usage")(usage.usage)
app.add_typer(admin.app, name="admin", help="Back up and restore a controller's database.")
# `shoal dev`, `shoal controller` and `shoal agent` live in serve.py.
serve.register(app)


def main() -> None:
    try:
        app(prog_name="shoal")
    except EXPECTED as error:
        typer.echo(f"error: {error_text(error)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
