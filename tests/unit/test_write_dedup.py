"""Remembered write replies and repair rebuilds (storage_service.write_path)."""

from __future__ import annotations

from py3fs import wire
from storage_service.write_path import WritePath

CHUNK = b"\x00" * 12


def test_reply_older_than_a_repair_is_not_trusted() -> None:
    wp = WritePath(ctx=None, resync=None)  # type: ignore[arg-type]
    lost = ("client-a", 1, CHUNK)
    kept = ("client-b", 7, CHUNK)
    wp._done[lost] = wire.WriteReply(chunk_ver=2, length=4, crc=0)
    wp._done[kept] = wire.WriteReply(chunk_ver=3, length=64, crc=0)
    assert wp._recall(lost, 101) is not None
    # A repair rebuilt the chunk at version 3 from the head's data, which may not
    # hold the write committed here at version 2: its retry must be applied again.
    wp._repaired[(101, CHUNK)] = 3
    assert wp._recall(lost, 101) is None
    assert lost not in wp._done
    # The write that carried the repair is in the rebuilt content: still deduped.
    assert wp._recall(kept, 101) == wire.WriteReply(chunk_ver=3, length=64, crc=0)
    # Other targets on the node keep their own history.
    wp._done[lost] = wire.WriteReply(chunk_ver=2, length=4, crc=0)
    assert wp._recall(lost, 102) is not None
