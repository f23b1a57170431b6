"""The committed gRPC modules match what the .proto files generate, the mgmt
table names exactly the methods its service declares, and the meta service
table is well formed."""

from __future__ import annotations

import pathlib

import pytest

from py3fs.proto import mgmt_pb2
from py3fs.proto.generate import PROTOS, generate
from py3fs.proto.messages import MGMT_RPCS, MetaReq
from py3fs.proto.services import MetaService

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


def test_mgmt_table_matches_service() -> None:
    desc = mgmt_pb2.DESCRIPTOR.services_by_name["Mgmt"]
    assert {m.name for m in desc.methods} == set(MGMT_RPCS)


def test_meta_table() -> None:
    rpcs = MetaService.rpcs()
    numbers = [r.number for r in rpcs]
    assert len(set(numbers)) == len(numbers)
    assert len({r.title for r in rpcs}) == len(rpcs)
    # Every meta request carries the caller's identity and idempotency key.
    assert all(issubclass(r.req, MetaReq) for r in rpcs)
    assert MetaService.mkdir.title == "Mkdir"
    assert MetaService.mkdir.mutating
    assert MetaService.list_dir.title == "ListDir"
    assert not MetaService.list_dir.mutating
