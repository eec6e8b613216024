"""The listening side: the host and port arguments and the sockets.

* Host ``0``, ``::``, ``0.0.0.0`` or empty: every local address.  One
  ``AF_INET6`` socket with ``IPV6_V6ONLY`` off where the kernel allows
  (IPv4 clients then arrive IPv4-mapped), two sockets (IPv6-only and
  IPv4) where it does not, and a plain ``AF_INET`` socket under ``-4``
  or on hosts without IPv6.
* An IPv4 literal (or an IPv4-mapped IPv6 literal) binds an ``AF_INET``
  socket and puts the server in IPv4 mode, as if ``-4`` were given.
* An IPv6 literal, optionally with ``%iface``, binds ``AF_INET6``.
* Anything else is a name, qualified and resolved through our own DNS
  stub resolver (:func:`ucspi.dns.lookup.qualify`); the first address is used.

The port is a decimal number from 0 to 65535 (the C server takes any
number modulo 65536; a larger one is a usage error here) or a TCP
service name from ``/etc/services``.

Two other ways to listen (design: unix-mode, socket-activation):

* **UNIX-domain mode** (:func:`open_unix`): a host starting with ``/``
  is a socket path, bound as it is.  The socket file gets the mode the
  umask leaves (the kernel creates it ``0777 & ~umask``); SIGTERM
  removes it (:mod:`.signals`), but only while it is still the file
  this server made (same device and inode).
* **Socket activation** (:func:`inherited`): when ``LISTEN_PID`` is our
  pid and ``LISTEN_FDS`` is at least 1, the listening sockets are the
  descriptors from 3 on, made by the supervisor (systemd, s6's
  ``s6-fdholder``, ...); nothing is bound.  Each must be a listening
  stream socket, TCP over IPv4 or IPv6, or UNIX.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from typing import Callable, List, Mapping, Optional, Tuple

from ..address import parse_quad, scope_id
from ..errors import Fatal, UsageError, errtext
from ..scan import PORT_MAX, decimal, is_digits, shown

WILDCARDS = ("0", "::", "0.0.0.0", "")


#: the variables of socket activation, removed from the programs' environment
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
#: the first inherited descriptor (sd_listen_fds(3))
FIRST_INHERITED = 3


class Listener:
    """The bound, listening sockets and what they imply.

    Attributes:
        sockets: each one's family says IPv4, IPv6 or UNIX.
        port: the port of the first TCP socket (``-1``), None if none.
        path: the socket file this server made (UNIX mode, not
            inherited), with its ``(st_dev, st_ino)``, for SIGTERM.
        inherited: the sockets came from the supervisor.
    """

    def __init__(self, sockets: List[socket.socket], port: Optional[int],
                 path: Optional[Tuple[str, int, int]] = None,
                 inherited: bool = False) -> None:
        self.sockets = sockets
        self.port = port
        self.path = path
        self.inherited = inherited


def unix_path(sock: socket.socket) -> str:
    """The path a UNIX socket is bound to, as the environment shows it
    (``UNIXLOCALPATH``): an abstract name as ``@name``, an unnamed
    socket as the empty string."""
    name: object = sock.getsockname()
    if isinstance(name, bytes):
        if name[:1] == b"\0":
            return "@" + os.fsdecode(name[1:])
        return os.fsdecode(name)
    text = str(name)
    if text.startswith("\0"):
        return "@" + text[1:]
    return text


def parse_port(text: str) -> int:
    """A port argument.

    Raises:
        UsageError: a number above 65535.
        Fatal: ``unable to figure out port number for <text>``.
    """
    if text == "":
        return 0
    if is_digits(text):
        port = decimal(text, PORT_MAX)
        if port is None:
            raise UsageError(f"the port wants a number from 0 to {PORT_MAX} or a service "
                             f"name, not {shown(text)}")
        return port
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError, ValueError):
        raise Fatal(f"unable to figure out port number for {text}") from None


def dotted_quad(text: str) -> Optional[str]:
    """A strict IPv4 literal: four decimal parts 0..255 (leading zeros
    allowed, as the C parser does), optionally in brackets."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    octets = parse_quad(text, max_digits=3)
    return None if octets is None else ".".join(str(n) for n in octets)


Resolve = Callable[[str], List[ipaddress.IPv6Address]]


def host_address(host: str, ipv4_only: bool, resolve: Resolve) -> Tuple[bool, str, int]:
    """Turn the host argument into ``(ipv4, address text, scope id)``.

    Args:
        host: the argument.
        ipv4_only: ``-4`` was given.
        resolve: qualifies and resolves a name (see module docstring);
            returns IPv6 addresses (A answers IPv4-mapped), ``[]`` for
            none, raises for a temporary failure.

    Raises:
        Fatal: no address, or the lookup failed.
    """
    if host in WILDCARDS:
        return (True, "0.0.0.0", 0) if ipv4_only else (False, "::", 0)
    quad = dotted_quad(host)
    if quad is not None:
        return True, quad, 0
    if ":" in host and "[" not in host:
        text, _, scope = host.partition("%")
        try:
            addr = ipaddress.IPv6Address(text)
        except ValueError:
            raise Fatal(f"no IP address for {host}") from None
        return _v6(addr, _scope(scope))
    try:
        found = resolve(host)
    except Exception as exc:  # resolver failures of any kind
        raise Fatal(f"temporarily unable to figure out IP address for {host}: {errtext(exc)}") from None
    if not found:
        raise Fatal(f"no IP address for {host}")
    return _v6(found[0], 0)


def _v6(addr: ipaddress.IPv6Address, scope: int) -> Tuple[bool, str, int]:
    v4 = addr.ipv4_mapped
    if v4 is not None:
        return True, str(v4), 0
    if addr == ipaddress.IPv6Address("::"):
        return False, "::", scope
    return False, str(addr), scope


def _scope(name: str) -> int:
    """A scope id as the C server reads one: none or unknown is 0."""
    if not name:
        return 0
    try:
        return scope_id(name)
    except ValueError:
        return 0


def interface_index(name: Optional[str]) -> int:
    """``-I`` interface name to index (unknown names give 0, as in C)."""
    return _scope(name or "")


def _socket(family: int) -> socket.socket:
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise Fatal(f"unable to create socket: {errtext(exc)}") from None


def _bind(sock: socket.socket, address: Tuple[object, ...], backlog: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    except OSError as exc:
        raise Fatal(f"unable to do set SO_REUSEADDR: {errtext(exc)}") from None
    try:
        sock.bind(address)
    except OSError as exc:
        raise Fatal(f"unable to bind: {errtext(exc)}") from None
    try:
        port: int = sock.getsockname()[1]
    except OSError as exc:
        raise Fatal(f"unable to get local address: {errtext(exc)}") from None
    try:
        sock.listen(backlog)
    except OSError as exc:
        raise Fatal(f"unable to listen: {errtext(exc)}") from None
    sock.setblocking(False)
    return port


def open_listener(ipv4: bool, address: str, scope: int, port: int, backlog: int) -> Listener:
    """Create, bind and listen.

    Raises:
        Fatal: with the C texts (``unable to bind: address already used``...).
    """
    if not ipv4:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            if address != "::":
                raise Fatal("unable to create socket: address family not supported") from None
            ipv4, address = True, "0.0.0.0"
        else:
            return _open6(sock, address, scope, port, backlog)
    sock = _socket(socket.AF_INET)
    bound = _bind(sock, (address, port), backlog)
    return Listener([sock], bound)


def _open6(sock: socket.socket, address: str, scope: int, port: int, backlog: int) -> Listener:
    dual = address == "::"
    extra: Optional[socket.socket] = None
    if dual:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            except OSError as exc:
                raise Fatal(f"unable to set IPV6_V6ONLY: {errtext(exc)}") from None
            extra = _socket(socket.AF_INET)
    bound = _bind(sock, (address, port, 0, scope), backlog)
    listener = Listener([sock], bound)
    if extra is not None:
        _bind(extra, ("0.0.0.0", bound), backlog)
        listener.sockets.append(extra)
    return listener


# -- UNIX-domain mode ---------------------------------------------------------
def open_unix(path: str, backlog: int) -> Listener:
    """Create, bind and listen on a UNIX stream socket at ``path``.

    Raises:
        Fatal: IndiMail's texts (``unable to bind to <path>: address
            already used``; ``unable to listen on socket  <path>`` has
            two spaces).
    """
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise Fatal(f"unable to create socket {path}: {errtext(exc)}") from None
    try:
        sock.bind(path)
    except (OSError, ValueError) as exc:
        sock.close()
        raise Fatal(f"unable to bind to {path}: {_bind_error(exc)}") from None
    try:
        made = os.stat(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise Fatal(f"unable to listen on socket  {path}: {errtext(exc)}") from None
    sock.setblocking(False)
    return Listener([sock], None, (path, made.st_dev, made.st_ino))


def _bind_error(exc: BaseException) -> str:
    """djb's text for a failed ``bind`` of a UNIX socket.  Python itself
    refuses a path longer than ``sun_path`` with an ``OSError`` that has
    no errno ("AF_UNIX path too long", the only such error of a UNIX
    address): that is ``ENAMETOOLONG``."""
    if isinstance(exc, OSError) and exc.errno is None:
        return errtext(errno.ENAMETOOLONG)
    return errtext(exc)


def remove_stale(path: str) -> None:
    """``-e`` in UNIX mode: remove what is left at ``path`` by a server
    that is gone.  Only a socket is removed: any other file there is
    left alone (and the bind then fails with ``address already used``).

    Raises:
        Fatal: ``couldn't remove <path>: <err>``.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise Fatal(f"couldn't remove {path}: {errtext(exc)}") from None


def remove_own(made: Optional[Tuple[str, int, int]]) -> None:
    """Remove the socket file this server made, if it is still that
    file (another server may have replaced it).  Safe in a signal
    handler: two system calls, errors ignored."""
    if made is None:
        return
    path, dev, ino = made
    try:
        found = os.lstat(path)
        if found.st_dev == dev and found.st_ino == ino:
            os.unlink(path)
    except OSError:
        pass


# -- socket activation ---------------------------------------------------------
def activated(environ: Mapping[str, str], pid: int) -> int:
    """How many sockets the supervisor passed: ``LISTEN_FDS`` when
    ``LISTEN_PID`` is ``pid``, else 0 (not for us: ignored)."""
    if environ.get("LISTEN_PID", "") != str(pid):
        return 0
    count = decimal(environ.get("LISTEN_FDS", ""), 65536)
    return count or 0


def inherited(count: int) -> Listener:
    """The listening sockets on descriptors 3 .. 3 + ``count`` - 1.

    Raises:
        Fatal: ``inherited descriptor N is not a listening stream socket``.
    """
    sockets: List[socket.socket] = []
    port: Optional[int] = None
    for fd in range(FIRST_INHERITED, FIRST_INHERITED + count):
        sock = _inherited(fd)
        sockets.append(sock)
        if port is None and sock.family != socket.AF_UNIX:
            try:
                port = sock.getsockname()[1]
            except OSError as exc:
                raise Fatal(f"unable to get the local address of inherited descriptor "
                            f"{fd}: {errtext(exc)}") from None
    return Listener(sockets, port, inherited=True)


def _inherited(fd: int) -> socket.socket:
    bad = Fatal(f"inherited descriptor {fd} is not a listening stream socket")
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        raise bad from None
    try:
        ok = (sock.type == socket.SOCK_STREAM
              and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
              and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1)
    except OSError:
        ok = False
    if not ok:
        sock.detach()
        raise bad
    try:
        sock.set_inheritable(False)    # not for the programs
        sock.setblocking(False)
    except OSError as exc:
        sock.detach()
        raise Fatal(f"unable to set up inherited descriptor {fd}: {errtext(exc)}") from None
    return sock
