"""`kubectl shoal ...`: the shoal CLI as a kubectl plugin, on kubectl's current context.

kubectl runs `kubectl-shoal` (on PATH) for `kubectl shoal ARGS`. kubectl's own `exec`,
`port-forward` and `logs` are for Pods; `kubectl shoal ssh|exec|console|vnc|port-forward|logs
VM` reach a VM through shoal's tunnels with the server, token, CA and namespace of kubectl's
current context (written by `shoal context kubeconfig`), whatever shoal's own current context is.
"""

import sys

import typer

from shoal.cli.common import use_context
from shoal.kubeconfig import KubeconfigError, current_context


def main() -> None:
    try:
        name, context = current_context()
    except (KubeconfigError, OSError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
    use_context(f"kubectl:{name}", context, module=__name__)
    from shoal.cli.main import main as shoal_main

    sys.argv[0] = "kubectl shoal"
    shoal_main()


if __name__ == "__main__":  # ssh's ProxyCommand under `kubectl shoal ssh`
    main()
