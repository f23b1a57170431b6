"""fuse_mount (in progress)."""
