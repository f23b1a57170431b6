"""The py3fs exception hierarchy, with stable codes that travel over RPC.

Every error a service can report is a subclass of `Py3fsError` carrying a class-level
`code` (stable, never reused), an `errno` for POSIX surfaces (CLI, FUSE) and whether
a client may retry it. Codes are grouped by subsystem::

    Py3fsError (1)
    ├── KVError (1000)
    │   ├── KVConflict (1001, retryable)      transaction lost a conflict
    │   ├── KVUnavailable (1002, retryable)   backend unreachable / locked
    │   └── KVTooLarge (1003)                 transaction over backend limits
    ├── RPCError (2000)
    │   ├── RPCUnavailable (2001, retryable)  peer unreachable, connection lost
    │   ├── RPCTimeout (2002, retryable)
    │   ├── BadFrame (2003)                   malformed or truncated frame
    │   ├── UnknownMessage (2004)             unknown message type or RPC
    │   ├── FrameTooLarge (2005)              length over the configured limit
    │   └── AddressInUse (2006, EADDRINUSE)   a server cannot bind its port
    ├── MetaError (3000)
    │   ├── NotFound (3001, ENOENT)
    │   ├── AlreadyExists (3002, EEXIST)
    │   ├── NotADirectory (3003, ENOTDIR)
    │   ├── IsADirectory (3004, EISDIR)
    │   ├── NotEmpty (3005, ENOTEMPTY)
    │   ├── InvalidArgument (3006, EINVAL)
    │   ├── NameTooLong (3007, ENAMETOOLONG)
    │   ├── PermissionDenied (3008, EACCES)
    │   ├── CrossDevice (3009, EXDEV)
    │   ├── TooManyLinks (3010, EMLINK)
    │   ├── BadFileHandle (3011, EBADF)
    │   ├── OperationNotPermitted (3012, EPERM)
    │   └── TooManySymlinks (3013, ELOOP)   also an InvalidArgument
    ├── StorageError (4000)
    │   ├── ChunkNotFound (4001, ENOENT)
    │   ├── ChainVersionMismatch (4002, retryable)  caller's routing is stale
    │   ├── ChunkNotCommitted (4003, retryable)     dirty replica; read the tail
    │   ├── ChecksumMismatch (4004, EIO, retryable) replica data is corrupt
    │   ├── NoSpace (4005, ENOSPC)
    │   ├── TargetNotServing (4006, retryable)
    │   └── ChunkTooLarge (4007, EFBIG)
    ├── MgmtError (5000)
    │   ├── NotPrimary (5001, retryable)
    │   ├── UnknownNode (5002)
    │   └── NoChainTable (5003, retryable)   cluster has no chains yet
    ├── AuthError (6000)
    │   ├── Unauthenticated (6001, EACCES)  no token, or one nobody holds
    │   └── CapabilityExpired (6002, retryable)  ask meta for a new one
    ├── ClientError (7000)
    │   └── RoutingUnavailable (7001, retryable)
    └── InjectedFault (9001)                 raised by an enabled fault point (tests)

`error_from_code` turns a code received from the wire back into its class.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar


class Py3fsError(Exception):
    code: ClassVar[int] = 1
    errno: ClassVar[int] = _errno.EIO
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__

    def __str__(self) -> str:
        return self.message


_REGISTRY: dict[int, type[Py3fsError]] = {}


def _register(cls: type[Py3fsError]) -> type[Py3fsError]:
    assert cls.code not in _REGISTRY, f"duplicate error code {cls.code}"
    _REGISTRY[cls.code] = cls
    return cls


def error_from_code(code: int, message: str) -> Py3fsError:
    """Rebuild the exception for `code`; unknown codes become a plain Py3fsError."""
    cls = _REGISTRY.get(code, Py3fsError)
    err = cls(message)
    if cls is Py3fsError and code != Py3fsError.code:
        err.message = f"[code {code}] {message}"
    return err


_register(Py3fsError)


class KVError(Py3fsError):
    code = 1000


class KVConflict(KVError):
    code = 1001
    retryable = True


class KVUnavailable(KVError):
    code = 1002
    retryable = True


class KVTooLarge(KVError):
    code = 1003
    errno = _errno.E2BIG


class RPCError(Py3fsError):
    code = 2000


class RPCUnavailable(RPCError):
    code = 2001
    retryable = True


class RPCTimeout(RPCError):
    code = 2002
    errno = _errno.ETIMEDOUT
    retryable = True


class BadFrame(RPCError):
    code = 2003
    errno = _errno.EPROTO


class UnknownMessage(RPCError):
    code = 2004
    errno = _errno.EPROTO


class FrameTooLarge(RPCError):
    code = 2005
    errno = _errno.EMSGSIZE


class AddressInUse(RPCError):
    code = 2006
    errno = _errno.EADDRINUSE


class MetaError(Py3fsError):
    code = 3000


class NotFound(MetaError):
    code = 3001
    errno = _errno.ENOENT


class AlreadyExists(MetaError):
    code = 3002
    errno = _errno.EEXIST


class NotADirectory(MetaError):
    code = 3003
    errno = _errno.ENOTDIR


class IsADirectory(MetaError):
    code = 3004
    errno = _errno.EISDIR


class NotEmpty(MetaError):
    code = 3005
    errno = _errno.ENOTEMPTY


class InvalidArgument(MetaError):
    code = 3006
    errno = _errno.EINVAL


class NameTooLong(MetaError):
    code = 3007
    errno = _errno.ENAMETOOLONG


class PermissionDenied(MetaError):
    code = 3008
    errno = _errno.EACCES


class CrossDevice(MetaError):
    code = 3009
    errno = _errno.EXDEV


class TooManyLinks(MetaError):
    code = 3010
    errno = _errno.EMLINK


class BadFileHandle(MetaError):
    code = 3011
    errno = _errno.EBADF


class OperationNotPermitted(MetaError):
    code = 3012
    errno = _errno.EPERM


class TooManySymlinks(InvalidArgument):
    code = 3013
    errno = _errno.ELOOP


class StorageError(Py3fsError):
    code = 4000


class ChunkNotFound(StorageError):
    code = 4001
    errno = _errno.ENOENT


class ChainVersionMismatch(StorageError):
    code = 4002
    retryable = True


class ChunkNotCommitted(StorageError):
    code = 4003
    retryable = True


class ChecksumMismatch(StorageError):
    code = 4004
    retryable = True


class NoSpace(StorageError):
    code = 4005
    errno = _errno.ENOSPC


class TargetNotServing(StorageError):
    code = 4006
    retryable = True


class ChunkTooLarge(StorageError):
    code = 4007
    errno = _errno.EFBIG


class MgmtError(Py3fsError):
    code = 5000


class NotPrimary(MgmtError):
    code = 5001
    retryable = True


class UnknownNode(MgmtError):
    code = 5002


class NoChainTable(MgmtError):
    code = 5003
    retryable = True


class AuthError(Py3fsError):
    code = 6000
    errno = _errno.EACCES


class Unauthenticated(AuthError):
    code = 6001


class CapabilityExpired(AuthError):
    code = 6002
    retryable = True


class ClientError(Py3fsError):
    code = 7000


class RoutingUnavailable(ClientError):
    code = 7001
    retryable = True


class InjectedFault(Py3fsError):
    """Raised by a fault point switched on with the `error` action (py3fs.faults)."""

    code = 9001


for _cls in list(globals().values()):
    if (
        isinstance(_cls, type)
        and issubclass(_cls, Py3fsError)
        and _cls is not Py3fsError
    ):
        _register(_cls)


def from_oserror(exc: OSError) -> Py3fsError:
    """Translate an OSError from local disk I/O into the matching py3fs error."""
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return NoSpace(str(exc))
    if exc.errno == _errno.ENOENT:
        return ChunkNotFound(str(exc))
    return StorageError(f"{exc.strerror or exc} ({exc.errno})")
