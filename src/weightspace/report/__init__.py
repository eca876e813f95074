"""weightspace.report."""
