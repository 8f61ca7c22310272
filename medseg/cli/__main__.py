"""`python -m medseg.cli`: the same command line as the `medseg` script."""

from medseg.cli.app import main

main()
