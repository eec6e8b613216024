"""Log lines of tcpserver: formats and the ``safecats`` filter.

The formats are djb 0.88's (design: log-lines), a contract that log parsers
written for ucspi-tcp rely on::

    tcpserver: status: n/m
    tcpserver: pid P from IP
    tcpserver: ok P localhost:localip:localport remotehost:remoteip:remoteinfo:remoteport
    tcpserver: deny P ...same fields...
    tcpserver: end P status W        (W = the raw wait status)

IndiMail-only events keep IndiMail's words (``end IP perIPlimit k``,
``sighup: n/m``, the SIGUSR1 table).  Every variable field passes
:func:`safe`: at most 100 bytes, bytes outside ``!``..``~`` and ``%``
become ``?``, and ``...`` marks a cut.  Like djb, ``:`` becomes ``?``
too, except inside IP address fields, where IPv6 needs it (IndiMail).

Each line goes out in one ``write`` to fd 2; errors writing the log are
ignored (a broken log must not stop the server).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Tuple, Union

Text = Union[str, bytes]

_SAFE = bytes(
    (c if 33 <= c <= 126 and c not in (0x25, 0x3A) else 0x3F) for c in range(256)
)
_SAFE_IP = bytes(
    (c if 33 <= c <= 126 and c != 0x25 else 0x3F) for c in range(256)
)


def safe(text: Optional[Text], keep_colon: bool = False) -> bytes:
    """djb's ``safecats``: the log form of one field.

    Args:
        text: the field (``None`` is empty).
        keep_colon: keep ``:`` (for IP address fields).
    """
    if not text:
        return b""
    data = text if isinstance(text, bytes) else os.fsencode(text)
    cut = data.find(b"\0")
    if cut >= 0:
        data = data[:cut]
    table = _SAFE_IP if keep_colon else _SAFE
    if len(data) >= 100:
        return data[:100].translate(table) + b"..."
    return data.translate(table)


def say(line: bytes, fd: int = 2) -> None:
    """Write one diagnostic line (``\n`` added) in one write, ignoring
    errors: a broken log must not stop the server or the tools."""
    try:
        os.write(fd, line + b"\n")
    except OSError:
        pass


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a blocking descriptor), however
    many writes it takes.

    Raises:
        OSError: a write failed.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def connection_fields(
    localhost: Optional[Text], localip: str, localport: int,
    remotehost: Optional[Text], remoteip: str, remoteinfo: Optional[Text],
    remoteport: int,
) -> bytes:
    """The part of an ``ok``/``deny`` line after the pid."""
    return b"%s:%s:%d %s:%s:%s:%d" % (
        safe(localhost), safe(localip, True), localport,
        safe(remotehost), safe(remoteip, True), safe(remoteinfo), remoteport,
    )


class Log:
    """Writes tcpserver's diagnostics to fd 2 at a verbosity level.

    0 (``-q``): nothing; 1 (``-Q``, default): errors and warnings;
    2 (``-v``): also status and per-connection lines.
    """

    def __init__(self, verbosity: int = 1, prog: bytes = b"tcpserver", fd: int = 2) -> None:
        self.verbosity = verbosity
        self.prefix = prog + b": "
        self.fd = fd

    def line(self, text: bytes) -> None:
        """Write ``<prog>: <text>\\n`` in one write, ignoring errors."""
        say(self.prefix + text, self.fd)

    def lines(self, texts: Iterable[bytes]) -> None:
        data = b"".join(self.prefix + t + b"\n" for t in texts)
        if data:
            try:
                os.write(self.fd, data)
            except OSError:
                pass

    def fatal(self, message: str) -> None:
        if self.verbosity >= 1:
            self.line(b"fatal: " + os.fsencode(message))

    def warning(self, message: str) -> None:
        if self.verbosity >= 1:
            self.line(b"warning: " + os.fsencode(message))

    def drop(self, message: str) -> None:
        """``warning: dropping connection, <message>``: the originals'
        shape, for their own messages."""
        self.warning("dropping connection, " + message)

    def drop_from(self, ip: str, message: str) -> None:
        """``warning: dropping connection from <ip>, <message>``: our
        shape, for the reasons the originals do not have."""
        self.warning(f"dropping connection from {ip}, {message}")

    # -- verbosity 2 lines ---------------------------------------------
    def status(self, children: int, limit: int) -> None:
        if self.verbosity >= 2:
            self.line(b"status: %d/%d" % (children, limit))

    def pid(self, pid: int, remoteip: str) -> None:
        if self.verbosity >= 2:
            self.line(b"pid %d from %s" % (pid, safe(remoteip, True)))

    def verdict(self, ok: bool, pid: int, fields: bytes) -> None:
        if self.verbosity >= 2:
            self.line(b"%s %d %s" % (b"ok" if ok else b"deny", pid, fields))

    def end(self, pid: int, status: int) -> None:
        if self.verbosity >= 2:
            self.line(b"end %d status %d" % (pid, status))

    # -- IndiMail events, verbosity >= 1 ---------------------------------
    def per_host(self, remoteip: str, count: int) -> None:
        if self.verbosity >= 1:
            self.line(b"end %s perIPlimit %d" % (safe(remoteip, True), count))

    def sighup(self, children: int, limit: int) -> None:
        if self.verbosity >= 1:
            self.line(b"sighup: %d/%d" % (children, limit))

    def table(self, entries: Iterable[Tuple[int, str, int]]) -> None:
        """The connection table, one ``<slot>: IP <ip>: PID <pid>`` line
        per running program."""
        self.lines(b"%d: IP %s: PID %d" % (slot, safe(ip, True), pid)
                   for slot, ip, pid in entries)
