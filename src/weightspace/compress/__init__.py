"""weightspace.compress."""
