"""The storage service: chunk store per target, CRAQ write path, reads, data server."""
