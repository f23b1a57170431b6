"""hf3fs_fuse (in progress)."""
