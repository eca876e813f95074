"""weightspace.align."""
