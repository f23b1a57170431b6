"""The one place where errors become FUSE replies.

Every FUSE operation is wrapped by `fuse_errors`: a `Py3fsError` answers with its
errno, an `OSError` (a hook or the local system) with its own, a `FUSEError`
passes through, and anything else is a bug: it is logged with its traceback and
the kernel gets EIO, so one bad request never takes the daemon down.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import pyfuse3

from py3fs import errors

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def to_fuse_error(exc: BaseException) -> pyfuse3.FUSEError:
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, errors.Py3fsError):
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, OSError) and exc.errno:
        return pyfuse3.FUSEError(exc.errno)
    return pyfuse3.FUSEError(errno.EIO)


def fuse_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except errors.Py3fsError as exc:
            # Meta's answers (ENOENT, EACCES...) are ordinary; anything else is
            # storage or RPC trouble, worth a line.
            ordinary = isinstance(exc, errors.MetaError | errors.AuthError)
            level = logging.DEBUG if ordinary else logging.WARNING
            logger.log(level, "%s: %s [%s]", fn.__name__, exc, type(exc).__name__)
            raise to_fuse_error(exc) from None
        except OSError as exc:
            logger.debug("%s: %s", fn.__name__, exc)
            raise to_fuse_error(exc) from None
        except Exception:
            logger.exception("unexpected error in FUSE %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
