"""Acceptance 2 and the name checks of 6: the namespace through the client."""

from __future__ import annotations

import errno

import pytest

from client import Client
from py3fs import errors
from py3fs.proto.messages import InodeType


async def test_nested_mkdir_and_stat(fs: Client) -> None:
    await fs.mkdir("/n/a/b/c", parents=True)
    node = await fs.stat("/n/a/b/c")
    assert node.type == InodeType.DIRECTORY
    with pytest.raises(errors.AlreadyExists) as info:
        await fs.mkdir("/n/a")
    assert info.value.errno == errno.EEXIST
    with pytest.raises(errors.NotFound) as info:
        await fs.mkdir("/n/missing/child")
    assert info.value.errno == errno.ENOENT
    await fs.write_file("/n/file", b"x")
    with pytest.raises(errors.NotADirectory) as info:
        await fs.mkdir("/n/file/child")
    assert info.value.errno == errno.ENOTDIR


async def test_thousand_files_listed_in_pages(fs: Client) -> None:
    await fs.mkdir("/many")
    names = sorted(f"f{i:04d}" for i in range(1000))
    for name in names:
        async with await fs.open(f"/many/{name}", "wb"):
            pass
    listed = [e.name async for e in fs.iterdir("/many", page=128)]
    assert listed == names
    assert len(await fs.listdir("/many")) == 1000


async def test_rename(fs: Client) -> None:
    await fs.mkdir("/r/src/deep", parents=True)
    await fs.mkdir("/r/dst")
    await fs.write_file("/r/src/a", b"A")
    await fs.write_file("/r/dst/b", b"B")

    await fs.rename("/r/src/a", "/r/dst/a")  # across directories
    assert not await fs.exists("/r/src/a")
    assert await fs.read_file("/r/dst/a") == b"A"

    await fs.rename("/r/dst/a", "/r/dst/b")  # replaces a file
    assert await fs.read_file("/r/dst/b") == b"A"
    assert [e.name for e in await fs.listdir("/r/dst")] == ["b"]

    with pytest.raises(errors.InvalidArgument) as info:
        await fs.rename("/r/src", "/r/src/deep/inside")  # into its own subtree
    assert info.value.errno == errno.EINVAL
    assert await fs.exists("/r/src/deep")

    await fs.write_file("/r/src/deep/x", b"x")
    with pytest.raises(errors.NotEmpty):
        await fs.rename("/r/dst", "/r/src")  # over a non-empty directory
    await fs.rename("/r/src", "/r/moved")
    assert await fs.read_file("/r/moved/deep/x") == b"x"


async def test_unlink_rmdir(fs: Client) -> None:
    await fs.mkdir("/u")
    await fs.write_file("/u/f", b"data")
    with pytest.raises(errors.NotEmpty) as info:
        await fs.rmdir("/u")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(errors.IsADirectory):
        await fs.unlink("/u")
    with pytest.raises(errors.NotADirectory):
        await fs.rmdir("/u/f")
    await fs.unlink("/u/f")
    with pytest.raises(errors.NotFound):
        await fs.stat("/u/f")
    await fs.rmdir("/u")
    assert not await fs.exists("/u")


async def test_symlinks_and_hard_links(fs: Client) -> None:
    await fs.mkdir("/l")
    await fs.write_file("/l/target", b"payload")
    await fs.symlink("/l/target", "/l/sym")
    assert await fs.readlink("/l/sym") == "/l/target"
    assert (await fs.stat("/l/sym", follow=False)).type == InodeType.SYMLINK
    assert await fs.read_file("/l/sym") == b"payload"

    await fs.link("/l/target", "/l/hard")
    assert (await fs.stat("/l/target")).nlink == 2
    await fs.unlink("/l/target")
    node = await fs.stat("/l/hard")
    assert node.nlink == 1
    assert await fs.read_file("/l/hard") == b"payload"
    with pytest.raises(errors.NotFound):
        await fs.read_file("/l/sym")  # dangling now


@pytest.mark.parametrize(
    ("path", "exc", "code"),
    [
        ("", errors.InvalidArgument, errno.EINVAL),
        ("relative/name", errors.InvalidArgument, errno.EINVAL),
        ("/names/bad\0name", errors.InvalidArgument, errno.EINVAL),
        ("/names/" + "n" * 256, errors.NameTooLong, errno.ENAMETOOLONG),
    ],
)
async def test_invalid_names(fs: Client, path: str, exc: type, code: int) -> None:
    await fs.mkdir("/names", parents=True)
    with pytest.raises(exc) as info:
        await fs.mkdir(path)
    assert info.value.errno == code
    with pytest.raises(exc):
        await fs.write_file(path, b"x")


async def test_name_of_255_bytes_is_fine(fs: Client) -> None:
    await fs.mkdir("/names", parents=True)
    name = "é" * 127 + "x"  # 255 bytes of UTF-8
    await fs.write_file(f"/names/{name}", b"ok")
    assert name in [e.name for e in await fs.listdir("/names")]
