"""plugins (in progress)."""
