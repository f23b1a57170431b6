"""Regenerate the gRPC modules: `python -m py3fs.proto.generate [OUT_DIR]`.

The generated modules are committed; tests/unit/test_proto_fresh.py checks that
regenerating produces the same files.
"""

from __future__ import annotations

import pathlib
import sys

PROTOS = ("envelope.proto", "mgmt.proto")


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc  # dev dependency

    root = pathlib.Path(__file__).resolve().parents[2]
    args = [
        "protoc",
        f"-I{root}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f"py3fs/proto/{p}" for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")


if __name__ == "__main__":
    generate(
        pathlib.Path(sys.argv[1])
        if len(sys.argv) > 1
        else pathlib.Path(__file__).resolve().parents[2]
    )
