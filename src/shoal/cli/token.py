"""`shoal token`: bearer tokens of service accounts (shown once, stored hashed)."""

from typing import Annotated

import typer

from shoal.cli.common import ContextOpt, NamespaceOpt, connect
from shoal.cli.parse import parse_duration
from shoal.client import resource_path

app = typer.Typer(help="Create and revoke service-account tokens.", no_args_is_help=True)

AccountArg = Annotated[str, typer.Argument(help="Name of the service account.", show_default=False)]


@app.command()
def create(
    serviceaccount: AccountArg,
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl",
            help="Lifetime: seconds, or 30m, 1h, 2d; default: does not expire.",
            show_default=False,
        ),
    ] = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Create a token for a service account; prints only the token."""
    body = {"spec": {"expirationSeconds": parse_duration(ttl)}} if ttl else None
    with connect(context, namespace) as target:
        path = resource_path("serviceaccounts", target.namespace, serviceaccount, "token")
        answer = target.client.request("POST", path, body=body)
    typer.echo(answer["status"]["token"])


@app.command()
def revoke(
    serviceaccount: AccountArg,
    token_id: Annotated[
        str, typer.Argument(help="ID of the token (see `shoal serviceaccount get`).")
    ],
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Revoke one token of a service account."""
    with connect(context, namespace) as target:
        path = resource_path("serviceaccounts", target.namespace, serviceaccount, "tokens")
        target.client.request("DELETE", f"{path}/{token_id}")
    typer.echo(f"token {token_id} of serviceaccount {serviceaccount} revoked")
