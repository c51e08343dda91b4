"""`python -m crossfade` runs the command line."""

from crossfade.cli import main

main()
