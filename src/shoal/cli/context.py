"""`shoal context`: the servers this CLI talks to (the contexts file; tokens never printed)."""

import ssl
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from shoal.cli.common import CliError
from shoal.cli.output import Format, OutputOpt, print_data, print_table
from shoal.client import Context, Contexts
from shoal.tls import fetch_pinned_ca

app = typer.Typer(help="Manage server contexts (server, token, CA).", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Name of the context.", show_default=False)]


def read_token(token: str | None, token_file: Path | None) -> str:
    if token and token_file:
        raise CliError("give either --token or --token-file, not both")
    if token_file is not None:
        try:
            text = token_file.read_text().strip()
        except OSError as error:
            raise CliError(f"--token-file {token_file}: {error.strerror or error}") from None
        if not text:
            raise CliError(f"--token-file {token_file} is empty")
        return text
    if not token:
        raise CliError("a token is needed: --token TOKEN or --token-file PATH")
    return token.strip()


def _untrusted(error: httpx.HTTPError) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(error)


def check_system_trust(server: str) -> None:
    """An https server without a pinned CA must be trusted by the system's store."""
    try:
        httpx.get(server + "/healthz", timeout=15)
    except httpx.HTTPError as error:
        if _untrusted(error):
            raise CliError(
                f"the certificate of {server} is not trusted by this system: pass "
                "--ca-fingerprint SHA256 (shown by the controller at start and in its join tokens)"
            ) from None
        raise CliError(f"cannot reach {server} to check its certificate: {error}") from None


def resolve_tls(server: str, fingerprint: str | None) -> tuple[str | None, str | None]:
    """(caFingerprint, caCert PEM) to store for server."""
    if server.startswith("http://"):
        if fingerprint:
            raise CliError("--ca-fingerprint only applies to https:// servers")
        return None, None
    if not server.startswith("https://"):
        raise CliError(f"--server {server!r} must start with https:// or http://")
    if not fingerprint:
        check_system_trust(server)
        return None, None
    wanted = fingerprint.strip().lower().removeprefix("sha256:").replace(":", "")
    pem = fetch_pinned_ca(server, wanted)
    return wanted, pem.decode()


@app.command()
def add(
    name: NameArg,
    server: Annotated[
        str, typer.Option("--server", help="Controller URL, e.g. https://ci.example:8420.")
    ],
    token: Annotated[
        str | None, typer.Option("--token", help="Bearer token.", show_default=False)
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file", help="Read the bearer token from this file.", show_default=False
        ),
    ] = None,
    ca_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--ca-fingerprint",
            help="SHA-256 hex of the server's CA certificate: its CA is fetched and pinned.",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Default namespace for this context.")
    ] = "default",
    use: Annotated[
        bool, typer.Option("--use/--no-use", help="Make it the current context.")
    ] = True,
) -> None:
    """Add (or replace) a context: where the server is and how to authenticate."""
    secret = read_token(token, token_file)
    server = server.rstrip("/")
    fingerprint, ca_pem = resolve_tls(server, ca_fingerprint)
    contexts = Contexts.load()
    existed = name in contexts.contexts
    contexts.contexts[name] = Context(
        server=server,
        token=secret,
        namespace=namespace,
        caFingerprint=fingerprint,
        caCert=ca_pem,
    )
    if use:
        contexts.current = name
    contexts.save()
    typer.echo(f"context {name} {'updated' if existed else 'added'}")
    if contexts.current == name:
        typer.echo(f"switched to context {name}")


@app.command()
def use(name: NameArg) -> None:
    """Make a context the current one."""
    contexts = Contexts.load()
    if name not in contexts.contexts:
        known = ", ".join(sorted(contexts.contexts)) or "none"
        raise CliError(f"context {name!r} not found (known: {known})")
    contexts.current = name
    contexts.save()
    typer.echo(f"switched to context {name}")


@app.command()
def current() -> None:
    """Print the name of the current context."""
    contexts = Contexts.load()
    if not contexts.current:
        raise CliError("no current context: run `shoal context add` or `shoal dev`")
    typer.echo(contexts.current)


def _tls_text(ctx: Context) -> str:
    if ctx.server.startswith("http://"):
        return "none"
    return f"pinned:{ctx.caFingerprint[:12]}" if ctx.caFingerprint else "system"


@app.command("list")
def list_(output: OutputOpt = Format.table) -> None:
    """List contexts; the current one is marked with '*'. Tokens are never shown."""
    contexts = Contexts.load()
    if output in (Format.json, Format.yaml):
        items: list[dict[str, Any]] = [
            {
                "name": name,
                "server": ctx.server,
                "namespace": ctx.namespace,
                "caFingerprint": ctx.caFingerprint,
                "current": name == contexts.current,
            }
            for name, ctx in contexts.contexts.items()
        ]
        print_data({"current": contexts.current, "items": items}, output)
        return
    if not contexts.contexts:
        typer.echo("No contexts: add one with `shoal context add`.", err=True)
        return
    rows = [
        ["*" if name == contexts.current else "", name, ctx.server, ctx.namespace, _tls_text(ctx)]
        for name, ctx in contexts.contexts.items()
    ]
    print_table(["CURRENT", "NAME", "SERVER", "NAMESPACE", "CA"], rows)


@app.command()
def delete(name: NameArg) -> None:
    """Delete a context (if it was current, no context is current afterwards)."""
    contexts = Contexts.load()
    if name not in contexts.contexts:
        raise CliError(f"context {name!r} not found")
    del contexts.contexts[name]
    if contexts.current == name:
        contexts.current = None
    contexts.save()
    typer.echo(f"context {name} deleted")


@app.command()
def kubeconfig(
    name: Annotated[
        str | None,
        typer.Argument(help="The shoal context (default: the current one).", show_default=False),
    ] = None,
    kube_context: Annotated[
        str | None,
        typer.Option(help="Name of the kubectl context, cluster and user (default: shoal-NAME)."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--kubeconfig",
            help="The kubeconfig to write into (default: the first file of $KUBECONFIG, else "
            "~/.kube/config).",
        ),
    ] = None,
    set_current: Annotated[bool, typer.Option(help="Make it kubectl's current context.")] = True,
) -> None:
    """Write a shoal context into a kubeconfig, so stock kubectl talks to shoal (`kubectl get vms`).

    Merges a cluster (server and CA), a user (the token) and a context of one name, keeping the
    file's other entries; the file is written 0600. kubectl sends tokens only over HTTPS.
    """
    from shoal.cli.common import load_context
    from shoal.kubeconfig import KubeconfigError, default_path, merge_context

    chosen, context = load_context(name)
    entry = kube_context or f"shoal-{chosen}"
    path = file or default_path()
    try:
        merge_context(path, entry, context, make_current=set_current)
    except KubeconfigError as error:
        raise CliError(str(error)) from None
    current = " (now kubectl's current context)" if set_current else ""
    typer.echo(f"kubectl context {entry} written to {path}{current}")
