"""One TLS session over memory BIOs, for a server or a client, with no
I/O of its own.

A :class:`Channel` is fed the bytes that came from the network
(:meth:`Channel.feed`) and leaves in :attr:`Channel.wire` the bytes to
send; the handshake is a state machine advanced by
:meth:`Channel.handshake` whenever bytes have come, and it can be
started at once (immediate TLS) or later, on request (STARTTLS; the
UCSPI-TLS ``y`` command), on a connection that carried plaintext until
then.  Whoever drives it owns the socket: the relay child's ``poll``
loop (:mod:`.relay`), or a client's.  So the channel alone decides what
is read from the socket and when, which is what lets a relay send
close_notify without losing the peer's later data.

When the handshake is done, :meth:`Channel.facts` gives what the
session is (protocol, cipher, SNI name, peer certificate) as an
:class:`ucspi.environ.TlsFacts`, which the environment builder turns
into variables (:func:`ucspi.environ.tls_changes`).  Everything a
handshake learns is kept on its channel, one per connection.
"""

from __future__ import annotations

import ssl
from typing import Any, Callable, List, Mapping, Optional

from ..environ import TlsFacts
from ..errors import UcspiError, errtext
from .context import library_error, sni_of
from .failure import CLEAN_CLOSE, PROTOCOL, SYSCALL, WANT_READ

#: what the handshake's failure lines start with, by side
VERBS = {True: "SSL_accept", False: "SSL_connect"}


class HandshakeFailed(UcspiError):
    """The handshake failed; ``lines`` are IndiMail's ``SSL_accept:``
    (or, for a client, ``SSL_connect:``) lines, and ``cause`` is
    ucspi-ssl's word for a refused client certificate, or None."""

    def __init__(self, lines: List[str], cause: Optional[str] = None) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines
        self.cause = cause


#: the library's reason when ``-y`` asked and the client sent no certificate
NO_PEER_CERTIFICATE = "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def client_refused(exc: BaseException) -> Optional[str]:
    """Why a server refused its client's certificate (ucspi-ssl's words,
    design: client-certificates), or None when that is not what failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"unable to validate client certificate: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None) == NO_PEER_CERTIFICATE:
        return "no client certificate"
    return None


class Channel:
    """A TLS session over memory BIOs.

    Args:
        ctx: the context (its ``sni_callback`` may pick another).
        server_side: True for the server's end.
        server_hostname: a client's name for SNI and name checks.
    """

    def __init__(self, ctx: ssl.SSLContext, server_side: bool,
                 server_hostname: Optional[str] = None) -> None:
        self.server_side = server_side
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                server_hostname=server_hostname)
        #: encrypted bytes waiting for the socket
        self.wire = bytearray()
        #: sees what the peer sends before the TLS layer does (the
        #: server's SNI check, :meth:`ucspi.tls.context.Sni.received`)
        self.watch: Optional[Callable[[bytes], None]] = None

    # -- bytes in and out ----------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes from the network.  The peer's end of file is not fed:
        OpenSSL 3 takes an EOF without close_notify for a fatal error
        and would refuse to send anything after it (a peer may
        half-close)."""
        if self.watch is not None:
            self.watch(data)
        self.incoming.write(data)

    def collect(self) -> None:
        """Move what the TLS layer produced to :attr:`wire`."""
        if self.outgoing.pending:
            self.wire += self.outgoing.read()

    # -- the handshake ---------------------------------------------------------
    def handshake(self) -> bool:
        """Advance the handshake with what has been fed; True when it is
        done.  What it has to send is in :attr:`wire`.

        Raises:
            HandshakeFailed: with the lines for the failure (the alert
                for the peer, if there is one, is in :attr:`wire`).
        """
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except (OSError, ssl.SSLError) as exc:
            self.collect()
            raise self.failure(exc) from None
        self.collect()
        return done

    def failure(self, exc: BaseException) -> HandshakeFailed:
        """IndiMail's lines (libqmail's tls.c) for an exception."""
        verb = VERBS[self.server_side]
        if isinstance(exc, ssl.SSLZeroReturnError):
            return HandshakeFailed([f"{verb}: decoded err: {CLEAN_CLOSE}"])
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLSyscallError)):
            return HandshakeFailed([f"{verb}: decoded err: {SYSCALL}"])
        if isinstance(exc, ssl.SSLError):
            return HandshakeFailed([f"{verb}: decoded err: {PROTOCOL}",
                                    f"{verb}: TLS/SSL err: {library_error(exc)}"],
                                   client_refused(exc) if self.server_side else None)
        if isinstance(exc, OSError) and exc.errno:
            return HandshakeFailed([f"{verb}: system err: {errtext(exc)}",
                                    f"{verb}: decoded err: {SYSCALL}"])
        return HandshakeFailed([f"{verb}: decoded err: {SYSCALL}"])

    def timed_out(self) -> HandshakeFailed:
        """The lines for a handshake that did not finish in time."""
        return HandshakeFailed([f"{VERBS[self.server_side]}: decoded err: {WANT_READ}"])

    def ended(self) -> HandshakeFailed:
        """The lines for a peer that closed during the handshake."""
        verb = VERBS[self.server_side]
        return HandshakeFailed([f"{verb}: decoded err: {PROTOCOL}",
                                f"{verb}: TLS/SSL err: error:SSL routines::"
                                "unexpected eof while reading"])

    # -- the session -------------------------------------------------------------
    def facts(self) -> TlsFacts:
        """What the finished handshake agreed on.  ``peer_info`` is
        Python's decoded peer certificate, which it gives only for a
        verified one (a server's client, under ``-Y``/``-y``); a
        certificate it cannot decode gives None there."""
        version = self.tls.version() or ""
        cipher, _, bits = self.tls.cipher() or ("", "", 0)
        peer: Optional[bytes] = None
        info: Optional[Mapping[str, Any]] = None
        try:
            peer = self.tls.getpeercert(binary_form=True)
            info = self.tls.getpeercert() if peer is not None else None
        except (ValueError, ssl.SSLError):
            info = None
        sni = sni_of(self.tls) if self.server_side else self.tls.server_hostname
        asked = self.server_side and self.tls.context.verify_mode != ssl.CERT_NONE
        return TlsFacts(version, cipher, bits, sni, peer, info or None, asked)
