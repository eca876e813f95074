"""weightspace.zoo."""
