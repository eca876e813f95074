"""weightspace.io."""
