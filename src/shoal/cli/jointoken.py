"""`shoal node join-token`: expiring tokens that let a new host's agent join the cluster."""

from typing import Annotated

import typer

from shoal.cli.common import ContextOpt, connect
from shoal.cli.output import Format, OutputOpt, print_list
from shoal.cli.parse import parse_duration
from shoal.columns import JOIN_TOKEN_COLUMNS

app = typer.Typer(help="Tokens that let new hosts join.", no_args_is_help=True)

COLUMNS = JOIN_TOKEN_COLUMNS


@app.command()
def create(
    ttl: Annotated[
        str, typer.Option("--ttl", help="How long the token works: seconds, or 30m, 1h, 2d.")
    ] = "1h",
    context: ContextOpt = None,
) -> None:
    """Create a join token; prints only the token (it carries the CA fingerprint)."""
    seconds = parse_duration(ttl)
    with connect(context) as target:
        answer = target.request("POST", "/jointokens", {"spec": {"ttlSeconds": seconds}})
    typer.echo(answer["status"]["token"])


@app.command("list")
def list_(output: OutputOpt = Format.table, context: ContextOpt = None) -> None:
    """List join tokens that have not expired (their secrets are never shown again)."""
    with connect(context) as target:
        listing = target.request("GET", "/jointokens")
    print_list(listing, output, COLUMNS, empty="No join tokens.")


@app.command()
def revoke(
    token_id: Annotated[str, typer.Argument(help="ID of the token (from `list`).")],
    context: ContextOpt = None,
) -> None:
    """Revoke a join token: hosts can no longer join with it."""
    with connect(context) as target:
        target.request("DELETE", f"/jointokens/{token_id}")
    typer.echo(f"join token {token_id} revoked")
