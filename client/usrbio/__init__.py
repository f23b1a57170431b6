"""USRBIO: zero-copy batch I/O through shared memory.

`Usrbio` (no mount: the agent runs in-process) hands out `Iov` buffers and
`IoRing`s; `UsrbioServer` is the agent core the FUSE daemon hosts; `ring` holds
the shared-memory protocol between the two sides.
"""

from client.usrbio.fds import FdEntry, FdTable
from client.usrbio.iov import Iov, IovSlice
from client.usrbio.local import IoRing, Usrbio
from client.usrbio.server import UsrbioServer

__all__ = ["FdEntry", "FdTable", "IoRing", "Iov", "IovSlice", "Usrbio", "UsrbioServer"]
