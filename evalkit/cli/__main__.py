"""`python -m evalkit.cli`: the command, as the console script runs it."""

from evalkit.cli import main

main()
