"""py3fs's `hf3fs_fuse` package: 3FS's USRBIO wrapper (`hf3fs_fuse.io`)."""
