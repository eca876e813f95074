"""weightspace.analyze."""
