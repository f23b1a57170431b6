"""hf3fs_py_usrbio (in progress)."""
