"""`py3fs://` through fsspec against a real cluster: pandas, pyarrow, ranged reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

fsspec = pytest.importorskip("fsspec")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")

import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from client.fsspec import Py3fsFileSystem  # noqa: E402
from py3fs.cluster import LocalCluster  # noqa: E402


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Clients built from mgmt addresses get their token from the `token`
    # option alone (an integrator's way), not from the environment.
    monkeypatch.delenv("PY3FS_TOKEN", raising=False)
    monkeypatch.delenv("PY3FS_TOKEN_FILE", raising=False)


def admin_token(cluster: LocalCluster) -> str:
    return cluster.admin_token_file.read_text().strip()


@pytest.fixture
def pfs(cluster: LocalCluster) -> Iterator[Py3fsFileSystem]:
    fs = fsspec.filesystem(
        "py3fs",
        mgmt=cluster.mgmt_addresses,
        token=admin_token(cluster),
        skip_instance_cache=True,
    )
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture
def opts(cluster: LocalCluster) -> dict[str, object]:
    return {"mgmt": cluster.mgmt_addresses, "token": admin_token(cluster)}


def test_protocol_is_registered() -> None:
    assert fsspec.get_filesystem_class("py3fs") is Py3fsFileSystem


def test_pandas_parquet_roundtrip(opts: dict[str, object]) -> None:
    df = pd.DataFrame(
        {
            "id": range(10_000),
            "name": [f"row-{i}" for i in range(10_000)],
            "score": [i * 0.5 for i in range(10_000)],
        }
    )
    df.to_parquet("py3fs:///pandas/t.parquet", storage_options=opts)
    back = pd.read_parquet("py3fs:///pandas/t.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(back, df)
    # CSV goes through the same text-mode file objects.
    df.head(50).to_csv("py3fs:///pandas/t.csv", index=False, storage_options=opts)
    csv = pd.read_csv("py3fs:///pandas/t.csv", storage_options=opts)
    pd.testing.assert_frame_equal(csv, df.head(50))


def test_pyarrow_reads_dataset_directory(pfs: Py3fsFileSystem) -> None:
    pfs.makedirs("/ds/year=2024", exist_ok=True)
    pfs.makedirs("/ds/year=2025", exist_ok=True)
    for year, n in ((2024, 300), (2025, 200)):
        table = pa.table({"x": list(range(n)), "y": [str(year)] * n})
        with pfs.open(f"/ds/year={year}/part-0.parquet", "wb") as f:
            pq.write_table(table, f)
    dataset = ds.dataset("/ds", filesystem=pfs, format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 500
    assert sorted(set(table.column("year").to_pylist())) == [2024, 2025]
    filtered = dataset.to_table(filter=ds.field("year") == 2025)
    assert filtered.num_rows == 200
    assert pq.read_table("/ds/year=2024/part-0.parquet", filesystem=pfs).num_rows == 300


def test_ranged_reads_match(pfs: Py3fsFileSystem, opts: dict[str, object]) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)
    pfs.pipe_file("/ranges/blob.bin", data)
    with fsspec.open("py3fs:///ranges/blob.bin", "rb", **opts) as f:
        f.seek(1_000_000)
        assert f.read(70_000) == data[1_000_000:1_070_000]
        f.seek(-100, os.SEEK_END)
        assert f.read() == data[-100:]
        f.seek(0)
        assert f.read(10) == data[:10]
    # Small blocks: a read spans several fetched ranges.
    with pfs.open("/ranges/blob.bin", "rb", block_size=4096) as f:
        f.seek(5000)
        assert f.read(20_000) == data[5000:25_000]
    assert pfs.cat_file("/ranges/blob.bin", start=10, end=4106) == data[10:4106]
    assert pfs.cat_file("/ranges/blob.bin", start=-5) == data[-5:]
    assert pfs.read_block("/ranges/blob.bin", 100, 50) == data[100:150]


def test_buffered_writes_and_append(pfs: Py3fsFileSystem) -> None:
    parts = [os.urandom(n) for n in (1, 5000, 70_000, 3)]
    with pfs.open("/w/f.bin", "wb", block_size=8192) as f:
        for p in parts:
            f.write(p)
    assert pfs.cat("/w/f.bin") == b"".join(parts)
    with pfs.open("/w/f.bin", "ab") as f:
        f.write(b"tail")
    assert pfs.cat("/w/f.bin") == b"".join(parts) + b"tail"
    with pfs.open("/w/empty", "wb"):
        pass
    assert pfs.info("/w/empty")["size"] == 0
    with pfs.open("/w/t.txt", "w") as f:
        f.write("héllo\n")
    assert pfs.read_text("/w/t.txt") == "héllo\n"


def test_namespace_operations(pfs: Py3fsFileSystem, tmp_path: Path) -> None:
    pfs.mkdir("/ns/a/b")
    pfs.pipe({"/ns/a/one.txt": b"1", "/ns/a/b/two.txt": b"22", "/ns/three.csv": b"3"})
    assert pfs.ls("/ns", detail=False) == ["/ns/a", "/ns/three.csv"]
    info = pfs.info("/ns/a/b/two.txt")
    assert (info["type"], info["size"], info["name"]) == ("file", 2, "/ns/a/b/two.txt")
    assert pfs.info("py3fs:///ns/a")["type"] == "directory"
    assert pfs.isdir("/ns/a")
    assert pfs.isfile("/ns/three.csv")
    assert pfs.find("/ns") == ["/ns/a/b/two.txt", "/ns/a/one.txt", "/ns/three.csv"]
    assert pfs.glob("/ns/**/*.txt") == ["/ns/a/b/two.txt", "/ns/a/one.txt"]
    assert pfs.du("/ns") == 4

    pfs.cp("/ns/a/one.txt", "/ns/copy.txt")
    assert pfs.cat("/ns/copy.txt") == b"1"
    pfs.cp("/ns/a", "/ns/tree", recursive=True)
    assert pfs.cat("/ns/tree/b/two.txt") == b"22"
    pfs.mv("/ns/a", "/ns/moved")  # one rename in meta, directory and all
    assert not pfs.exists("/ns/a")
    assert pfs.cat("/ns/moved/b/two.txt") == b"22"

    local = tmp_path / "got.txt"
    pfs.get("/ns/moved/b/two.txt", str(local))
    assert local.read_bytes() == b"22"
    pfs.put(str(local), "/ns/up.txt")
    assert pfs.cat("/ns/up.txt") == b"22"

    pfs.rm("/ns/copy.txt")
    with pytest.raises(FileNotFoundError):
        pfs.info("/ns/copy.txt")
    with pytest.raises(FileNotFoundError):
        pfs.cat("/ns/nope")
    with pytest.raises(IsADirectoryError):
        pfs.rm("/ns/moved")
    pfs.rm("/ns/moved", recursive=True)
    pfs.rm("/ns", recursive=True)
    assert not pfs.exists("/ns")


async def test_async_api(cluster: LocalCluster) -> None:
    fs = Py3fsFileSystem(
        mgmt=cluster.mgmt_addresses,
        token_file=str(cluster.admin_token_file),
        asynchronous=True,
        skip_instance_cache=True,
    )
    try:
        await fs._pipe_file("/async/x", b"abcdef")
        assert await fs._cat_file("/async/x", start=2, end=4) == b"cd"
        assert await fs._ls("/async", detail=False) == ["/async/x"]
    finally:
        await fs._close()
