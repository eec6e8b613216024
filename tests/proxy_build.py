"""PROXY protocol headers built for the tests (the server only parses
them: :mod:`ucspi.proxy`)."""

from __future__ import annotations

import ipaddress
from typing import Sequence, Tuple, Union

from ucspi.address import ip6_text
from ucspi.proxy import CMD_LOCAL, CMD_PROXY, FAM_TCP4, FAM_TCP6, FAM_UNSPEC, SIG_V2, Tlv


_Pair = Union[Tuple[ipaddress.IPv4Address, ipaddress.IPv4Address],
              Tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]]


def _addresses(src_ip: str, dst_ip: str) -> _Pair:
    src = ipaddress.ip_address(src_ip)
    dst = ipaddress.ip_address(dst_ip)
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        return src, dst
    if isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address):
        return src, dst
    raise ValueError("source and destination of different families")


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")


def build_v1(src_ip: str = "", src_port: int = 0,
             dst_ip: str = "", dst_port: int = 0) -> bytes:
    """A version 1 line: ``TCP4`` or ``TCP6`` from the addresses'
    family, or ``PROXY UNKNOWN\\r\\n`` when both addresses are empty.

    Raises:
        ValueError: a bad address or port, or mixed families.
    """
    if not src_ip and not dst_ip:
        return b"PROXY UNKNOWN\r\n"
    _check_port(src_port)
    _check_port(dst_port)
    src, dst = _addresses(src_ip, dst_ip)
    if isinstance(src, ipaddress.IPv4Address):
        proto, s, d = "TCP4", str(src), str(dst)
    else:
        assert isinstance(dst, ipaddress.IPv6Address)
        proto, s, d = "TCP6", ip6_text(src), ip6_text(dst)
    return f"PROXY {proto} {s} {d} {src_port} {dst_port}\r\n".encode("ascii")


def build_v2(src_ip: str = "", src_port: int = 0,
             dst_ip: str = "", dst_port: int = 0, *,
             local: bool = False, tlvs: Sequence[Tlv] = ()) -> bytes:
    """A version 2 header.

    With both addresses empty: ``LOCAL`` with ``AF_UNSPEC`` and no
    address block.  With addresses: ``PROXY`` (``LOCAL`` if ``local``)
    over TCP, ``AF_INET`` or ``AF_INET6`` from their family.  The TLVs
    follow in order.

    Raises:
        ValueError: a bad address, port or TLV, mixed families, or a
            header longer than :data:`V2_MAX`.
    """
    body = bytearray()
    if not src_ip and not dst_ip:
        ver_cmd, fam = 0x20 | CMD_LOCAL, FAM_UNSPEC
    else:
        _check_port(src_port)
        _check_port(dst_port)
        src, dst = _addresses(src_ip, dst_ip)
        ver_cmd = 0x20 | (CMD_LOCAL if local else CMD_PROXY)
        fam = FAM_TCP4 if isinstance(src, ipaddress.IPv4Address) else FAM_TCP6
        body += src.packed + dst.packed
        body += src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big")
    for kind, value in tlvs:
        if not 0 <= kind <= 255 or len(value) > 65535:
            raise ValueError("bad TLV")
        body += bytes([kind]) + len(value).to_bytes(2, "big") + value
    if len(body) > 65535:
        raise ValueError("header too long")
    return SIG_V2 + bytes([ver_cmd, fam]) + len(body).to_bytes(2, "big") + bytes(body)
