"""weightspace.merge."""
