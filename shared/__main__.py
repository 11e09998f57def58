"""`python -m herd`: the same command as the `herd` console script."""

from herd.cli import main

main()
