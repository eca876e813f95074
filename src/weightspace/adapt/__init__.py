"""weightspace.adapt."""
