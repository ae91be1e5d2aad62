"""The `edgekernel` command line: one typer module per program."""
