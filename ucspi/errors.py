"""Error texts and exception types shared by the whole package.

The messages that tcpserver, tcprules and tcprulescheck print end in an
error text.  Like djb's ucspi-tcp (and IndiMail's libqmail) we do not use
``strerror()``: we carry djb's own table, so log parsers and people used
to the C tools see the same words.  :func:`errtext` maps an errno (or an
``OSError``) to that text.

Exit codes are decided in one place, the command's ``main``: inside the
package errors are raised as the typed exceptions below.

* :class:`UsageError`   -> exit 100, after the usage text.
* :class:`Fatal`        -> exit 111 (temporary) unless ``code`` says other.
"""

from __future__ import annotations

import errno as _errno
from typing import Dict, Optional, Union

EXIT_USAGE = 100
EXIT_TEMP = 111

_TABLE: Dict[str, str] = {
    "EINTR": "interrupted system call",
    "ENOMEM": "out of memory",
    "ENOENT": "file does not exist",
    "ETXTBSY": "text busy",
    "EIO": "input/output error",
    "EEXIST": "file already exists",
    "ETIMEDOUT": "timed out",
    "EINPROGRESS": "operation in progress",
    "EAGAIN": "temporary failure",
    "EWOULDBLOCK": "temporary failure",
    "EPIPE": "broken pipe",
    "EPERM": "permission denied",
    "EACCES": "access denied",
    "ESRCH": "no such process",
    "ENXIO": "device not configured",
    "E2BIG": "argument list too long",
    "ENOEXEC": "exec format error",
    "EBADF": "file descriptor not open",
    "ECHILD": "no child processes",
    "EFAULT": "bad address",
    "EBUSY": "device busy",
    "EXDEV": "cross-device link",
    "ENODEV": "device does not support operation",
    "ENOTDIR": "not a directory",
    "EISDIR": "is a directory",
    "EINVAL": "invalid argument",
    "ENFILE": "system cannot open more files",
    "EMFILE": "process cannot open more files",
    "ENOTTY": "not a tty",
    "EFBIG": "file too big",
    "ENOSPC": "out of disk space",
    "ESPIPE": "unseekable descriptor",
    "EROFS": "read-only file system",
    "EMLINK": "too many links",
    "EDOM": "input out of range",
    "ERANGE": "output out of range",
    "EALREADY": "operation already in progress",
    "ENOTSOCK": "not a socket",
    "EDESTADDRREQ": "destination address required",
    "EMSGSIZE": "message too long",
    "EPROTOTYPE": "incorrect protocol type",
    "ENOPROTOOPT": "protocol not available",
    "EPROTONOSUPPORT": "protocol not supported",
    "ESOCKTNOSUPPORT": "socket type not supported",
    "EOPNOTSUPP": "operation not supported",
    "EPFNOSUPPORT": "protocol family not supported",
    "EAFNOSUPPORT": "address family not supported",
    "EADDRINUSE": "address already used",
    "EADDRNOTAVAIL": "address not available",
    "ENETDOWN": "network down",
    "ENETUNREACH": "network unreachable",
    "ENETRESET": "network reset",
    "ECONNABORTED": "connection aborted",
    "ECONNRESET": "connection reset",
    "ENOBUFS": "out of buffer space",
    "EISCONN": "already connected",
    "ENOTCONN": "not connected",
    "ESHUTDOWN": "socket shut down",
    "ETOOMANYREFS": "too many references",
    "ECONNREFUSED": "connection refused",
    "ELOOP": "symbolic link loop",
    "ENAMETOOLONG": "file name too long",
    "EHOSTDOWN": "host down",
    "EHOSTUNREACH": "host unreachable",
    "ENOTEMPTY": "directory not empty",
    "EUSERS": "too many users",
    "EDQUOT": "disk quota exceeded",
    "ESTALE": "stale NFS file handle",
    "EREMOTE": "too many levels of remote in path",
    "ENOLCK": "no locks available",
    "ENOSYS": "system call not available",
    "ENOSTR": "not a stream device",
    "ETIME": "timer expired",
    "ENOSR": "out of stream resources",
    "ENOMSG": "no message of desired type",
    "EBADMSG": "bad message type",
    "EIDRM": "identifier removed",
    "ENONET": "machine not on network",
    "ENOLINK": "link severed",
    "EADV": "advertise error",
    "ESRMNT": "srmount error",
    "ECOMM": "communication error",
    "EPROTO": "protocol error",
    "EMULTIHOP": "multihop attempted",
    "EREMCHG": "remote address changed",
}

ERRTEXT: Dict[int, str] = {0: "no error"}
for _name, _text in _TABLE.items():
    _num = getattr(_errno, _name, None)
    if _num is not None:
        ERRTEXT.setdefault(_num, _text)


def errtext(err: Union[int, BaseException, None]) -> str:
    """Return djb's text for an errno or an exception.

    Args:
        err: an errno number, an ``OSError`` (its ``errno`` is used), any
            other exception (its ``errno`` attribute if it has one), or
            ``None`` (treated as 0, "no error").

    Returns:
        The text from djb's table, or ``"unknown error"``; an exception
        with a ``hint`` (a non-empty ``str`` attribute: what to do
        about it) gets it after the text, in parentheses.
    """
    if err is None:
        return ERRTEXT[0]
    if isinstance(err, BaseException):
        hint = getattr(err, "hint", None)
        num: Optional[int] = getattr(err, "errno", None)
        if num is None:
            if isinstance(err, TimeoutError):
                num = _errno.ETIMEDOUT
            elif isinstance(err, MemoryError):
                num = _errno.ENOMEM
        text = "unknown error" if num is None else ERRTEXT.get(num, "unknown error")
        return f"{text} ({hint})" if isinstance(hint, str) and hint else text
    return ERRTEXT.get(err, "unknown error")


#: errnos that say "no descriptor or buffer to spare right now": an
#: operation that fails with one of them may work a moment later.
RESOURCE_ERRNOS = frozenset(
    getattr(_errno, name) for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
    if hasattr(_errno, name))


def out_of_resources(exc: BaseException) -> bool:
    """True if ``exc`` is an ``OSError`` for want of descriptors or
    memory (:data:`RESOURCE_ERRNOS`), not a refusal by a peer."""
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


class UcspiError(Exception):
    """Base class of every error this package raises on purpose."""


class UsageError(UcspiError):
    """The command line is wrong: print the message (if any), the usage
    text, and exit 100."""


class Fatal(UcspiError):
    """A fatal error of a command: print ``<prog>: fatal: <message>``
    and exit with ``code`` (111 unless told otherwise)."""

    def __init__(self, message: str, code: int = EXIT_TEMP) -> None:
        super().__init__(message)
        self.code = code

