"""py3fs: the Fire-Flyer File System (3FS) rebuilt in Python."""

__version__ = "0.1.0"
