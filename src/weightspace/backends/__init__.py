"""weightspace.backends."""
