"""`python -m shoal`: the CLI, for when the `shoal` script is not on PATH (ssh's ProxyCommand)."""

from shoal.cli.main import main

main()
