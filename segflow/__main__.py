from segflow.cli import cli

cli()
