"""How a failed TLS handshake is reported: IndiMail's lines (its
libqmail's tls.c), from the relay child or, for a client whose
ClientHello never came, from the loop.  No ``ssl`` here: the loop
imports this module for servers whose relay has not been forked yet.
"""

from __future__ import annotations

from typing import Iterable, Optional

from ..log import Log, say

#: the failure classes' texts, as IndiMail prints them (typo kept)
WANT_READ = "unprocessed data availabe for read"
CLEAN_CLOSE = "connection closed by TLS/SSL peer"
SYSCALL = "non-recoverable, fatal I/O error"
PROTOCOL = "non-recoverable, fatal protocol error"


def report(log: Log, lines: Iterable[str], verb: str = "accept",
           cause: Optional[str] = None) -> None:
    """The handshake's lines (at verbosity 1 and more), then
    ``dropping connection, unable to <verb> SSL connection``; a refused
    client certificate's ``cause`` (ucspi-ssl's words) comes first, as a
    warning (design: client-certificates)."""
    if cause is not None:
        log.warning(cause)
    if log.verbosity >= 1:
        for line in lines:
            say(line.encode())
    log.drop(f"unable to {verb} SSL connection")


def timed_out(log: Log) -> None:
    """The handshake did not finish within ``-S`` seconds."""
    report(log, [f"SSL_accept: decoded err: {WANT_READ}"])
