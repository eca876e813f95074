"""weightspace.cli."""
