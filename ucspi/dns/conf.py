"""Resolver configuration: name servers, rewriting rules, qualification.

What tcpserver's djbdns-style stub resolver reads before it asks
anything (IndiMail's dns_*.c files, read as design: dns-resolver says):

* the name servers, from ``$DNSCACHEIP`` (white-space or comma separated
  literals with an optional ``%iface``, or djbdns's dot-joined quads),
  else the ``nameserver`` lines of ``/etc/resolv.conf``, else ``::1``
  then ``127.0.0.1`` (only ``127.0.0.1`` when the server runs IPv4-only);
* the rewriting rules, from ``$DNSREWRITEFILE`` or ``/etc/dnsrewrite``,
  else ``$LOCALDOMAIN``, else the first ``search``/``domain`` line of
  ``/etc/resolv.conf``, else the host name;
* qualification of a host argument: apply the rules, expand ``+``
  searches into candidates, and tell literals from names.

Everything but :meth:`DnsConfig.load` works on text handed in, so the
djbdns examples can be checked without touching ``/etc``.  ``load``
never raises: a file it cannot read makes the lookups that need it fail
later (``servers_error``/``rules_error``), as in the original.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import List, Mapping, Optional, Tuple

from .msg import DnsError
from .. import timeouts
from ..address import IfIndex, mapped_ipv6, parse_quad, scope_id

Server = Tuple[str, int]            # (IP text, IPv6 scope id or 0)

MAX_SERVERS = 32
RESOLV_CONF = "/etc/resolv.conf"
DNSREWRITE = "/etc/dnsrewrite"

_QUAD = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NUMERIC = frozenset("0123456789.[]")
_ANY = IPv6Address("::")


# -- addresses -----------------------------------------------------------
def quad(text: str) -> Optional[IPv4Address]:
    """A whole-string dotted quad, decimal, leading zeros allowed
    (``127.000.000.001``), parts of any length, each at most 255; else
    None."""
    octets = parse_quad(text)
    return None if octets is None else IPv4Address(octets)


def ip4_literal(ip: IPv4Address) -> IPv6Address:
    """What an IPv4 literal stands for: ``::ffff:a.b.c.d``, except that
    ``0.0.0.0`` is ``::`` (djb's ip6_scan)."""
    if ip == IPv4Address(0):
        return _ANY
    return mapped_ipv6(ip)


def parse_server(token: str, ifindex: IfIndex = socket.if_nametoindex) -> Optional[Server]:
    """Parse one name-server literal: IPv4, or IPv6 with optional ``%iface``
    (an interface name or a numeric index).

    Returns:
        ``(ip text, scope id)``; IPv4-mapped addresses come back as IPv4
        text; None for ``0.0.0.0``/``::`` ("no server").

    Raises:
        ValueError: not a literal, a scope on IPv4, an unknown interface.
    """
    text, pct, scope = token.partition("%")
    v4 = quad(text)
    if v4 is None:
        v6 = IPv6Address(text)          # raises ValueError
        if v6.ipv4_mapped is not None and not pct:
            v4 = v6.ipv4_mapped
    else:
        v6 = None
    if v4 is not None:
        if pct:
            raise ValueError("scope on an IPv4 address")
        return None if v4.packed == bytes(4) else (str(v4), 0)
    assert v6 is not None
    if v6 == _ANY:
        return None
    return (str(v6), scope_id(scope, ifindex) if pct else 0)


def parse_dnscacheip(text: str, ifindex: IfIndex = socket.if_nametoindex) -> List[Server]:
    """Servers from ``$DNSCACHEIP``.

    Tokens are separated by white space or commas; a token is a literal
    (:func:`parse_server`) or several dotted quads joined by dots
    (``10.0.0.1.10.0.0.2``).  The first invalid token ends the list.
    At most :data:`MAX_SERVERS`.
    """
    servers: List[Server] = []
    for token in re.split(r"[\s,]+", text.strip()):
        if not token:
            continue
        try:
            found = [parse_server(token, ifindex)]
        except ValueError:
            found = _joined_quads(token)
            if not found:
                break
        servers.extend(s for s in found if s is not None)
    return servers[:MAX_SERVERS]


def _joined_quads(token: str) -> List[Optional[Server]]:
    parts = token.split(".")
    if len(parts) < 8 or len(parts) % 4:
        return []
    quads = [quad(".".join(parts[i:i + 4])) for i in range(0, len(parts), 4)]
    if any(q is None for q in quads):
        return []
    return [None if q.packed == bytes(4) else (str(q), 0) for q in quads if q is not None]


def parse_resolv_servers(text: str, ifindex: IfIndex = socket.if_nametoindex) -> List[Server]:
    """Servers from the ``nameserver`` lines of resolv.conf text.

    The keyword must start the line and be followed by a space or tab;
    the literal runs to the next blank, ``#`` or ``;``; lines whose
    literal is invalid are skipped.  At most :data:`MAX_SERVERS`.
    """
    servers: List[Server] = []
    for line in text.split("\n"):
        if not line.startswith(("nameserver ", "nameserver\t")):
            continue
        token = re.match(r"[^\s#;]*", line[11:].lstrip(" \t"))
        try:
            server = parse_server(token.group() if token else "", ifindex)
        except ValueError:
            continue
        if server is not None:
            servers.append(server)
    return servers[:MAX_SERVERS]


def default_servers(ipv4_only: bool = False) -> List[Server]:
    """``::1`` then ``127.0.0.1``; only ``127.0.0.1`` when IPv4-only."""
    if ipv4_only:
        return [("127.0.0.1", 0)]
    return [("::1", 0), ("127.0.0.1", 0)]


# -- rewriting rules -----------------------------------------------------
def rules_from_file(text: str) -> List[str]:
    """Every line is a rule (trailing blanks and CRs removed); invalid
    ones, comments included, are ignored when applied."""
    return [line.rstrip(" \t\r") for line in text.split("\n")]


def rules_from_localdomain(value: str) -> List[str]:
    """``$LOCALDOMAIN="a b"`` -> ``?:+.a+.b`` and ``*.:`` (split at single
    spaces, so doubled spaces give an empty ``+.``)."""
    return ["?:" + "".join("+." + word for word in value.split(" ")), "*.:"]


def rules_from_resolv(text: str) -> Optional[List[str]]:
    """Rules from the first line starting with ``search`` or ``domain``
    and a blank; None if there is none."""
    for line in text.split("\n"):
        if line[:7] in ("search ", "search\t", "domain ", "domain\t"):
            words = [w for w in re.split(r"[ \t]", line[7:]) if w]
            return ["?:" + "".join("+." + w for w in words), "*.:"]
    return None


def rules_from_hostname(host: str) -> List[str]:
    """``mx1.example.com`` -> ``?:.example.com`` and ``*.:``; a host name
    without a dot gives only ``*.:``."""
    dot = host.find(".")
    return (["?:" + host[dot:]] if dot >= 0 else []) + ["*.:"]


def ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def apply_rule(name: str, rule: str) -> str:
    """Apply one djbdns rewriting rule (``=``, ``*``, ``?`` or ``-``,
    suffix, ``:``, replacement); an invalid rule changes nothing."""
    if not rule or rule[0] not in "=*?-":
        return name
    kind = rule[0]
    post, colon, new = rule[1:].partition(":")
    if not colon or len(name) < len(post):
        return name
    pre = name[:len(name) - len(post)]
    if kind == "=" and pre:
        return name
    if ascii_lower(name[len(pre):]) != ascii_lower(post):
        return name
    if kind == "?" and any(c in pre for c in ".:[]"):
        return name
    return new if kind == "-" else pre + new


def apply_rules(name: str, rules: List[str]) -> str:
    """Apply every rule in order, each once, each to the previous result."""
    for rule in rules:
        name = apply_rule(name, rule)
    return name


def candidates(name: str) -> List[str]:
    """``x+y1+y2`` -> ``[x·y1, x·y2]``; a name without ``+`` -> ``[name]``.

    ``x`` alone is never a candidate (unless a piece is empty)."""
    x, plus, rest = name.partition("+")
    if not plus:
        return [name]
    return [x + y for y in rest.split("+")]


# -- literals ------------------------------------------------------------
def literal(candidate: str) -> Optional[List[IPv6Address]]:
    """Tell an address literal from a name (as IndiMail's qualification does).

    Returns:
        None for a name (to be looked up); otherwise the addresses it
        stands for: an IPv4 literal (as ``::ffff:a.b.c.d``; ``0.0.0.0`` as
        ``::``), an IPv6 literal (``%scope`` kept in ``scope_id``), a
        bracketed quad such as ``[10.0.0.1]``; ``[]`` for other strings of
        only digits, dots and brackets (``127.1``).

    Raises:
        DnsError: (EINVAL) the string merely starts with a literal, such
            as ``1.2.3.4x`` or ``10.0.0.1.nip.io``.
    """
    match = _QUAD.match(candidate)
    if match is not None:
        whole = quad(candidate)
        if whole is None:
            raise DnsError(f"not an IP address: {candidate}", errno.EINVAL)
        return [ip4_literal(whole)]
    if ":" in candidate:
        try:
            return [IPv6Address(candidate)]
        except ValueError:
            pass
        if any(_is_ipv6(candidate[:k]) for k in range(len(candidate) - 1, 1, -1)):
            raise DnsError(f"not an IP address: {candidate}", errno.EINVAL)
        return None
    if candidate and set(candidate) <= _NUMERIC:
        bracketed = quad(candidate.replace("[", "").replace("]", ""))
        return [ip4_literal(bracketed)] if bracketed is not None else []
    return None


def _is_ipv6(text: str) -> bool:
    try:
        IPv6Address(text)
    except ValueError:
        return False
    return True


# -- configuration -------------------------------------------------------
def _read(path: str) -> Optional[str]:
    """File text, None if it does not exist; DnsError on other errors."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DnsError(f"unable to read {path}", exc.errno or errno.EIO) from exc


@dataclass
class DnsConfig:
    """Everything a lookup needs; build it with :meth:`load` (once).

    The timing fields default to djbdns's schedule: UDP rounds of 3, 11
    and 45 s per server, the second round "patient" (a server failure or
    a refused connection keeps waiting for the deadline), 10 s budgets
    for a TCP connect+send and for the TCP reply.  Tests shrink them.
    """

    servers: List[Server] = field(default_factory=lambda: default_servers())
    rules: List[str] = field(default_factory=lambda: ["*.:"])
    port: int = 53
    udp_timeouts: Tuple[float, ...] = timeouts.DNS_UDP
    patient_round: Optional[int] = 1
    tcp_timeout: float = timeouts.DNS_TCP
    servers_error: Optional[DnsError] = None
    rules_error: Optional[DnsError] = None

    @classmethod
    def load(cls, environ: Mapping[str, str] = os.environ, ipv4_only: bool = False,
             *, resolv_conf: str = RESOLV_CONF, hostname: Optional[str] = None,
             ifindex: IfIndex = socket.if_nametoindex) -> "DnsConfig":
        """Read the server list and the rewriting rules.

        Args:
            environ: where ``DNSCACHEIP``, ``DNSREWRITEFILE`` and
                ``LOCALDOMAIN`` are looked up.
            ipv4_only: the server runs with ``-4``: default server
                ``127.0.0.1`` only.
            resolv_conf: the resolv.conf to read (tests).
            hostname: instead of ``socket.gethostname()`` (tests).
            ifindex: interface name -> index (tests).

        Returns:
            The configuration.  Never raises: read errors other than
            "does not exist" are kept in ``servers_error``/``rules_error``
            and make the lookups that need them fail.
        """
        conf = cls()
        resolv: Optional[str] = None
        resolv_error: Optional[DnsError] = None
        try:
            resolv = _read(resolv_conf)
        except DnsError as exc:
            resolv_error = exc
        conf.servers = parse_dnscacheip(environ.get("DNSCACHEIP", ""), ifindex)
        if not conf.servers:
            conf.servers_error = resolv_error
            conf.servers = parse_resolv_servers(resolv or "", ifindex)
        if not conf.servers:
            conf.servers = default_servers(ipv4_only)
        try:
            conf.rules = _load_rules(environ, resolv, resolv_error, hostname)
        except DnsError as exc:
            conf.rules, conf.rules_error = [], exc
        return conf


def _load_rules(environ: Mapping[str, str], resolv: Optional[str],
                resolv_error: Optional[DnsError], hostname: Optional[str]) -> List[str]:
    text = _read(environ.get("DNSREWRITEFILE", DNSREWRITE))
    if text is not None:
        return rules_from_file(text)
    if "LOCALDOMAIN" in environ:
        return rules_from_localdomain(environ["LOCALDOMAIN"])
    if resolv_error is not None:
        raise resolv_error
    rules = rules_from_resolv(resolv) if resolv is not None else None
    if rules is not None:
        return rules
    return rules_from_hostname(socket.gethostname() if hostname is None else hostname)
