"""`shoal logs VM`: a VM's serial console log, streamed from its node (`-f` keeps following)."""

import sys
from typing import Annotated

import typer

from shoal.cli.common import ContextOpt, NamespaceOpt, connect
from shoal.client import resource_path


def register(app: typer.Typer) -> None:
    @app.command()
    def logs(
        name: Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)],
        follow: Annotated[
            bool, typer.Option("--follow", "-f", help="Keep printing what the guest prints.")
        ] = False,
        tail_bytes: Annotated[
            int | None,
            typer.Option(min=1, help="Only the last N bytes of the log.", show_default=False),
        ] = None,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Print a VM's serial console log (what its guest printed since it was created)."""
        with connect(context, namespace) as target:
            path = resource_path("virtualmachines", target.namespace, name, "log")
            try:
                chunks = target.client.stream_bytes(
                    path, follow="true" if follow else None, tailBytes=tail_bytes
                )
                for chunk in chunks:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            except KeyboardInterrupt:
                pass
