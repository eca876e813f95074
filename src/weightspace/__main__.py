"""``python -m weightspace`` runs the CLI."""

from weightspace.cli import main

main()
