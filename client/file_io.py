"""The one inode-level file API: how every layer above `client` moves file data.

`client.File`, the FUSE mount's handles, the USRBIO agent and the KV cache all
read and write through `FileIO` (`Client.files`), knowing a file only by what
Open/Create return: its inode number, its layout, its length. The policy for
what is not there lives here once:
- a hole (a chunk never written, or bytes past a chunk's end) reads as zeros;
- a missing chunk of a file read without a write session may instead mean the
  file was removed and its chunks collected (meta keeps data only for write
  sessions): then the read fails with NotFound instead of returning zeros.
Chunk I/O runs in parallel over the file's chains (`StorageClient`); a write
returns once every replica holds it, and `flush` puts it on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from client.storage_client import ReadItem
from py3fs import errors
from py3fs.proto.messages import Layout

if TYPE_CHECKING:
    from client.client import Client

__all__ = ["FileIO", "ReadItem"]


class FileIO:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def read(
        self,
        inode: int,
        layout: Layout,
        offset: int,
        dest: Any,
        *,
        length: int,
        session: bool = False,
    ) -> int:
        """Fill `dest` from `offset` of a file of `length` bytes; returns how many
        bytes that is (short at the end). Raises NotFound if chunks are missing
        because the file was removed while held without a write `session`."""
        view = memoryview(dest).cast("B")
        n = max(0, min(view.nbytes, length - offset))
        if n:
            missing = await self._client.storage.read(inode, layout, offset, view[:n])
            if missing and not session:
                await self._check_not_removed(inode)
        return n

    async def _check_not_removed(self, inode: int) -> None:
        try:
            node = await self._client.stat_inode(inode)
        except errors.NotFound:
            node = None
        if node is None or node.nlink == 0:
            raise errors.NotFound(f"inode {inode} was removed while open for reading")

    async def read_batch(self, items: Sequence[ReadItem]) -> list[BaseException | None]:
        """Many reads (each `dest` clamped to the file's length by the caller), one
        frame per storage target; per item None or the error that failed it."""
        return await self._client.storage.read_batch(items)

    async def write(self, inode: int, layout: Layout, offset: int, data: Any) -> int:
        """Write `data` at `offset`; returns its length once every replica has it."""
        view = memoryview(data).cast("B")
        if view.nbytes:
            await self._client.storage.write(inode, layout, offset, view)
        return view.nbytes

    async def flush(self, layout: Layout) -> None:
        """Put what was written to the file's chains on disk on every replica."""
        await self._client.storage.flush(layout)

    async def truncate(
        self, inode: int, layout: Layout, length: int, old_length: int
    ) -> None:
        """Drop the bytes in [length, old_length), so extending reads zeros there."""
        await self._client.storage.truncate(inode, layout, length, old_length)
