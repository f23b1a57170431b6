"""CRAQ: chain tables, target states, placement. Pure logic for storage and mgmtd."""
