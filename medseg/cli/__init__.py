"""The `medseg` command line: one module per command group, each registering its commands on the
one Typer app (medseg.cli.app). ``main`` is the console script."""

from medseg.cli.app import app, main
from medseg.cli import images, datasets, catalog, training, predict, serving, evaluation  # noqa: F401,I001  (register the commands, in --help order)

__all__ = ["app", "main"]
