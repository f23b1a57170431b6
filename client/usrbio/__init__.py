"""USRBIO: zero-copy batch I/O (in progress)."""
