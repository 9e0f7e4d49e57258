"""`shoal logs VM`: a VM's serial console log, or its startup script's output, streamed from its
node (`-f` keeps following)."""

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
        startup: Annotated[
            bool,
            typer.Option(
                "--startup",
                help="The output of the VM's startup script instead (kept on its node).",
            ),
        ] = False,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        """Print a VM's serial console log (what its guest printed since it was created), or with
        --startup what its startup script printed."""
        with connect(context, namespace) as target:
            path = resource_path("virtualmachines", target.namespace, name, "log")
            try:
                chunks = target.client.stream_bytes(
                    path,
                    follow="true" if follow else None,
                    tailBytes=tail_bytes,
                    source="startup" if startup else None,
                )
                for chunk in chunks:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            except KeyboardInterrupt:
                pass
