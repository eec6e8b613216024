"""The environment handed to the program.

tcpserver never edits its own environment.  For each connection it
collects an ordered list of changes, "set NAME=VALUE" or "remove NAME"
(the standard ``TCP*`` variables first, rule variables after), and when
the program starts the environment is the server's own with each change
applied in order: later changes win, and a rule may override or remove
any standard variable (as in IndiMail).

Names and values are bytes: ident answers and rule values may hold any
byte but NUL.

A TLS session adds its own variables (:func:`tls_changes`, from the
:class:`TlsFacts` of the handshake), for the program's environment
(immediate TLS) or the reply to a UCSPI-TLS ``Y`` command; those of a
client certificate come from :mod:`ucspi.clientcert`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

Change = Tuple[bytes, Optional[bytes]]   # (name, value); None = remove
Environment = Dict[bytes, bytes]


class Endpoints:
    """What is known about one connection when its program starts.

    ``*_ip`` are in the primary form (dotted for IPv4 clients unless
    ``-6``; design: mapped-addresses), ``*_ip6`` in IPv6 text form (mapped ones as
    ``::ffff:a.b.c.d``), used only when ``v6sock``.
    """

    __slots__ = ("proto6", "v6sock", "local_ip", "local_ip6", "local_port",
                 "remote_ip", "remote_ip6", "remote_port", "local_host",
                 "remote_host", "paranoid", "remote_info", "interface", "others")

    def __init__(self, proto6: bool, v6sock: bool, local_ip: str, local_ip6: str,
                 local_port: int, remote_ip: str, remote_ip6: str, remote_port: int) -> None:
        self.proto6 = proto6
        self.v6sock = v6sock
        self.local_ip = local_ip
        self.local_ip6 = local_ip6
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_ip6 = remote_ip6
        self.remote_port = remote_port
        self.local_host: Optional[bytes] = None
        self.remote_host: Optional[bytes] = None
        self.paranoid: Optional[bytes] = None
        self.remote_info: Optional[bytes] = None
        self.interface: Optional[bytes] = None
        #: the other live connections from the client's address, when
        #: the server counts them (``TCPCONNNUM``)
        self.others: Optional[int] = None


def _b(text: str) -> bytes:
    return text.encode("ascii")


def connection_changes(ep: Endpoints) -> List[Change]:
    """The standard variables for one connection, in the C order."""
    local_port = b"%d" % ep.local_port
    remote_port = b"%d" % ep.remote_port
    changes: List[Change] = [
        (b"PROTO", b"TCP6" if ep.proto6 else b"TCP"),
        (b"TCPLOCALIP", _b(ep.local_ip)),
        (b"TCPLOCALPORT", local_port),
        (b"TCPLOCALHOST", ep.local_host),
    ]
    if ep.v6sock:
        changes += [
            (b"TCP6LOCALIP", _b(ep.local_ip6)),
            (b"TCP6LOCALPORT", local_port),
            (b"TCP6LOCALHOST", ep.local_host),
        ]
    if ep.interface is not None:
        changes.append((b"TCP6INTERFACE", ep.interface))
    changes += [
        (b"TCPREMOTEIP", _b(ep.remote_ip)),
        (b"TCPREMOTEPORT", remote_port),
        (b"TCPREMOTEHOST", ep.remote_host),
    ]
    if ep.v6sock:
        changes += [
            (b"TCP6REMOTEIP", _b(ep.remote_ip6)),
            (b"TCP6REMOTEPORT", remote_port),
            (b"TCP6REMOTEHOST", ep.remote_host),
        ]
    if ep.paranoid is not None:
        changes.append((b"TCPPARANOID", ep.paranoid))
    changes += [
        (b"TCPREMOTEINFO", ep.remote_info),
        (b"TCP6REMOTEINFO", ep.remote_info),
    ]
    if ep.others is not None:
        changes.append((b"TCPCONNNUM", b"%d" % ep.others))
    return changes


def apply(base: Mapping[bytes, bytes], changes: List[Change]) -> Environment:
    """The program's environment: ``base`` with ``changes`` applied.

    A set moves the variable to the end (as the C code appends it); a
    value is cut at its first NUL, which a C string could not hold.
    """
    env = dict(base)
    for name, value in changes:
        if not name or b"=" in name or b"\0" in name:
            continue  # no such variable can exist in an environment
        env.pop(name, None)
        if value is not None:
            cut = value.find(b"\0")
            env[name] = value if cut < 0 else value[:cut]
    return env


ALWAYS = frozenset((
    b"PROTO", b"TCPLOCALIP", b"TCPLOCALPORT", b"TCPLOCALHOST", b"TCPREMOTEIP",
    b"TCPREMOTEPORT", b"TCPREMOTEHOST", b"TCPREMOTEINFO", b"TCP6REMOTEINFO",
))
ON_V6SOCK = frozenset((
    b"TCP6LOCALIP", b"TCP6LOCALPORT", b"TCP6LOCALHOST",
    b"TCP6REMOTEIP", b"TCP6REMOTEPORT", b"TCP6REMOTEHOST",
))
SOMETIMES = frozenset((b"TCPPARANOID", b"TCP6INTERFACE", b"TCPCONNNUM"))


class Builder:
    """Builds program environments from the server's own, fast.

    Every connection sets or removes the same standard variables, so the
    server's environment is stripped of them once, and a connection's
    environment is a copy of that with its values added: the same result
    as :func:`apply`, without a ``pop`` per variable.  If the server
    inherited a variable that only some connections touch
    (``TCPPARANOID``, ``TCP6INTERFACE``, ``TCPCONNNUM``), the general
    path is used.
    """

    def __init__(self, base: Mapping[bytes, bytes]) -> None:
        self.base = dict(base)
        self.fast = not (self.base.keys() & SOMETIMES)
        self.stripped = {
            False: {k: v for k, v in self.base.items() if k not in ALWAYS},
            True: {k: v for k, v in self.base.items() if k not in ALWAYS | ON_V6SOCK},
        }

    def build(self, v6sock: bool, changes: List[Change], more: List[Change]) -> Environment:
        """The environment for ``changes`` (standard, from
        :func:`connection_changes`) followed by ``more`` (rules)."""
        if self.fast:
            env = dict(self.stripped[v6sock])
            for name, value in changes:
                if value is not None:
                    env[name] = value
        else:
            env = apply(self.base, changes)
        if more:
            env = apply(env, more)
        return env

    def build_plain(self, changes: List[Change]) -> Environment:
        """The server's environment with ``changes`` applied, and no
        standard ``TCP*`` variable touched (UNIX clients)."""
        return apply(self.base, changes)


class TlsFacts:
    """What a finished TLS handshake agreed on.

    Attributes:
        protocol: ``TLSv1.3``...
        cipher: the cipher's OpenSSL name.
        bits: the cipher's secret bits.
        sni: the server name the client asked for (checked), or None.
        peer_cert: the peer's certificate (DER), or None.
        peer_info: the peer's certificate as Python decodes it
            (``getpeercert()``), or None.
        client_asked: a server that asked its client for a certificate
            (``-Y``, ``-y``).
    """

    __slots__ = ("protocol", "cipher", "bits", "sni", "peer_cert", "peer_info", "client_asked")

    def __init__(self, protocol: str, cipher: str, bits: int, sni: Optional[str] = None,
                 peer_cert: Optional[bytes] = None,
                 peer_info: Optional[Mapping[str, Any]] = None,
                 client_asked: bool = False) -> None:
        self.protocol = protocol
        self.cipher = cipher
        self.bits = bits
        self.sni = sni
        self.peer_cert = peer_cert
        self.peer_info = peer_info
        self.client_asked = client_asked


#: the fields of a client certificate's names that have a variable each
#: (``SSL_CLIENT_S_DN_CN``...)
CLIENT_FIELDS = ("C", "ST", "L", "O", "OU", "CN", "Email")
#: the variables of a client certificate (design: client-certificates)
CLIENT_VARIABLES = (
    b"SSL_CLIENT_VERIFY", b"SSL_CLIENT_S_DN", b"SSL_CLIENT_I_DN",
    *(b"SSL_CLIENT_%s_DN_%s" % (side, field.encode())
      for side in (b"S", b"I") for field in CLIENT_FIELDS),
    b"SSL_CLIENT_M_SERIAL", b"SSL_CLIENT_M_VERSION", b"SSL_CLIENT_V_START",
    b"SSL_CLIENT_V_END", b"SSL_CLIENT_CERT", b"SSL_PEER_CERT_HASH",
)
#: the variables a TLS session sets; inherited values are removed
TLS_VARIABLES = (b"TLS_PROVIDER", b"SSL_PROTOCOL", b"SSL_CIPHER", b"SSL_TLS_SNI_SERVERNAME",
                 *CLIENT_VARIABLES)


def tls_changes(facts: TlsFacts, provider: str) -> List[Change]:
    """The variables of a TLS session: ``TLS_PROVIDER`` (``provider``),
    ``SSL_PROTOCOL``, ``SSL_CIPHER`` (ucspi-ssl's names), when the
    client named a server ``SSL_TLS_SNI_SERVERNAME`` (s6's name), and,
    when the server asked for a client certificate, its variables
    (:func:`ucspi.clientcert.client_changes`).  Inherited values of
    all these names are removed first."""
    changes: List[Change] = [(name, None) for name in TLS_VARIABLES]
    changes += [
        (b"TLS_PROVIDER", provider.encode()),
        (b"SSL_PROTOCOL", facts.protocol.encode()),
        (b"SSL_CIPHER", facts.cipher.encode()),
    ]
    if facts.sni:
        changes.append((b"SSL_TLS_SNI_SERVERNAME", facts.sni.encode()))
    if facts.client_asked:
        # imported at start-up under -Y/-y (ucspi.server.service), with hashlib
        from .clientcert import client_changes
        changes += client_changes(True, facts.peer_info, facts.peer_cert)
    return changes


def inherited(drop: Tuple[str, ...] = ()) -> Environment:
    """The environment the command was started with, as bytes, without
    the variables named in ``drop`` (those meant for the command alone:
    socket activation's, ``NOTIFY_SOCKET``).

    Python may have added ``LC_CTYPE`` to its own environment (PEP 538's
    locale coercion, under the C locale); the kernel's copy of the
    original, ``/proc/self/environ``, tells whether it did, and then the
    programs do not get it."""
    env = dict(os.environb)
    for name in drop:
        env.pop(name.encode(), None)
    if b"LC_CTYPE" in env:
        try:
            with open("/proc/self/environ", "rb") as handle:
                original = handle.read()
        except OSError:
            return env
        if not any(entry.startswith(b"LC_CTYPE=") for entry in original.split(b"\0")):
            del env[b"LC_CTYPE"]
    return env
