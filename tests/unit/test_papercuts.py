"""Papercuts with a unit-sized cause: port ranges in config, the fdb backend hint."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from py3fs import config, errors
from py3fs.kv.registry import open_database


@dataclass(frozen=True)
class _Cfg:
    port: int = 0
    status_port: int = 0


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_out_of_range_ports_are_config_errors(port: str) -> None:
    with pytest.raises(config.ConfigError, match="port"):
        config.load(_Cfg, "x", overrides={"port": port})
    with pytest.raises(config.ConfigError, match="status_port"):
        config.load(_Cfg, "x", env={"PY3FS_X_STATUS_PORT": port})


def test_ports_in_range_load() -> None:
    cfg = config.load(_Cfg, "x", overrides={"port": "65535", "status_port": 0})
    assert cfg == _Cfg(port=65535, status_port=0)


def test_missing_backend_module_says_so_without_a_pip_hint() -> None:
    with pytest.raises(errors.KVUnavailable) as info:
        open_database("fdb:///etc/foundationdb/fdb.cluster")
    assert "not included" in str(info.value)
    assert "pip install" not in str(info.value)
    assert "sqlite" in str(info.value)
