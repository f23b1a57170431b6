"""fuse_mount: the py3fs namespace through FUSE (pyfuse3), as a `fuse.hf3fs` mount."""
