"""weightspace.decompose."""
