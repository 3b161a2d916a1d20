"""Local development services."""
