"""``python -m weightspace`` runs the CLI."""

from weightspace.cli import main

if __name__ == "__main__":  # Dask's spawned workers import this module again: they must not run the CLI
    main()
