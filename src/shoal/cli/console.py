"""`shoal console VM`: the VM's serial console on this terminal, both ways."""

import asyncio
import contextlib
from typing import Annotated

import typer

from shoal.cli.common import ContextOpt, NamespaceOpt
from shoal.cli.portforward import endpoint
from shoal.tunnel.client import console as attach


def register(app: typer.Typer) -> None:
    @app.command()
    def console(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Attach to a VM's serial console (Ctrl-] ends it). Without a terminal, stdin is sent
        to the console and what it prints goes to stdout until the server closes."""
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                attach(endpoint(context, namespace, name), lambda t: typer.echo(t, err=True))
            )
