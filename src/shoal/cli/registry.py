"""`shoal registry login|logout`: logins to OCI registries, kept in shoal's `registries.json`
(mode 0600, next to the CLI's contexts). Pushes, pulls and the agents' nodes look there first,
then in docker's config file."""

import sys
from typing import Annotated

import typer

from shoal.cli.common import CliError
from shoal.images import credentials
from shoal.images.errors import AuthError, ImageError, InvalidReference
from shoal.images.reference import parse
from shoal.images.registry import RegistryClient

app = typer.Typer(help="Log in to OCI registries.", no_args_is_help=True)

HostArg = Annotated[
    str, typer.Argument(help="The registry: HOST[:PORT] (e.g. registry.example:5000).")
]


def registry_host(text: str) -> str:
    """host[:port] of a registry as a person may write it (also as a URL)."""
    host = credentials.normalize_host(text)
    try:
        valid = bool(host) and parse(f"{host}/x").host == host
    except InvalidReference:
        valid = False
    if not valid:
        raise CliError(f"{text!r} is not a registry HOST[:PORT]")
    return host


def _password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.read().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True)
    return password


@app.command()
def login(
    host: HostArg,
    username: Annotated[
        str | None,
        typer.Option(
            "--username", "-u", help="User name (asked for when not given).", show_default=False
        ),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Accept any TLS certificate, and plain HTTP (to check the login)."
        ),
    ] = False,
) -> None:
    """Check a login with the registry and save it for push, pull and this host's nodes."""
    server = registry_host(host)
    user = username if username is not None else str(typer.prompt("Username"))
    if not user or ":" in user:
        raise CliError("the user name must be non-empty and may not contain ':'")
    password = _password(password_stdin)
    if not password:
        raise CliError("the password is empty")
    try:
        with RegistryClient(server, credentials=(user, password), insecure=insecure) as client:
            client.ping()
    except AuthError:
        raise CliError(
            f"registry {server} refused the login of user {user!r}: wrong user name or password"
        ) from None
    except ImageError as error:
        raise CliError(str(error)) from None
    try:
        path = credentials.save_login(server, user, password)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot save the login: {error}") from None
    typer.echo(f"logged in to {server} as {user} (saved in {path})")


@app.command()
def logout(host: HostArg) -> None:
    """Forget the saved login for a registry (docker's config file is left alone)."""
    server = registry_host(host)
    try:
        removed = credentials.remove_login(server)
        remaining = credentials.lookup(server)
    except (OSError, ValueError) as error:
        raise CliError(str(error)) from None
    typer.echo(f"logged out of {server}" if removed else f"not logged in to {server}")
    if remaining is not None:
        typer.echo(
            f"note: {credentials.docker_path()} still has a login for {server} "
            "(shoal only reads that file)",
            err=True,
        )
