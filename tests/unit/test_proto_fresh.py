"""The committed gRPC modules match what the .proto files generate, and the
message tables name exactly the methods the services declare."""

from __future__ import annotations

import pathlib

import pytest

from py3fs.proto import meta_pb2, mgmt_pb2
from py3fs.proto.generate import PROTOS, generate
from py3fs.proto.messages import META_RPCS, MGMT_RPCS

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "py3fs" / "proto"


def test_generated_modules_are_fresh(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("grpc_tools")
    generate(tmp_path)
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            fresh = (tmp_path / "py3fs" / "proto" / f"{stem}{suffix}").read_text()
            committed = (PROTO_DIR / f"{stem}{suffix}").read_text()
            assert fresh == committed, (
                f"{stem}{suffix} is stale: run python -m py3fs.proto.generate"
            )


@pytest.mark.parametrize(
    ("module", "service", "table"),
    [(mgmt_pb2, "Mgmt", MGMT_RPCS), (meta_pb2, "Meta", META_RPCS)],
)
def test_tables_match_services(module: object, service: str, table: dict) -> None:
    desc = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
    assert {m.name for m in desc.methods} == set(table)
