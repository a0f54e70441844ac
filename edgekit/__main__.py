"""`python -m edgekit` runs the command-line interface."""
from edgekit.cli import main

main()
