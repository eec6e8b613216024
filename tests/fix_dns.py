"""DNS helpers: a real dnsmasq, and a programmable loopback fake.

:func:`dnsmasq` (the session fixture ``dns_server`` of
``tests/conftest.py``) starts ``/usr/sbin/dnsmasq`` on port 53 (UDP and
TCP; needs root) of a loopback address chosen for this run, serving
:data:`RECORDS` and nothing else: names under the :data:`LOCAL_DOMAINS`
that it does not know get NXDOMAIN at once; any other name gets REFUSED
(a server failure for the stub, so avoid those: they cost the whole
retry schedule).  Point a resolver at it with ``DNSCACHEIP=<its .ip>``
(DNSCACHEIP has no port syntax: hence port 53 and an address of its own).

The address is ``$UCSPI_TEST_DNS_IP`` if set, else a random 127.x.y.z
outside the ranges the tests use (:func:`random_loopback`), another one
being tried if something else already listens there, so that two runs
of the suite on one machine never fight over it.

:class:`FakeDns` is a tiny UDP+TCP name server on a loopback address and
a kernel-chosen port (no root needed), run in a thread.  A handler
decides, for every query, what to send back and when; the helpers
:func:`response` and :func:`rr` build the packets.  Use it with
``DnsConfig(servers=[(fake.ip, 0)], port=fake.port, ...)``, or, for a
server that reads DNSCACHEIP, on port 53 of an address of its own with
:func:`fake_dns_on_53`.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import random
import selectors
import socket
import struct
import subprocess
import threading
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import pytest

from tests.util import listens_on, missing, need, need_root, stop
from ucspi.dns import msg as dnsmsg

DNSMASQ = "/usr/sbin/dnsmasq"
#: the environment variable that fixes the dnsmasq address (port 53)
DNS_IP_VARIABLE = "UCSPI_TEST_DNS_IP"
#: tries with random addresses before giving up
ADDRESS_TRIES = 20
LOCAL_DOMAINS = ["example", "test", "in-addr.arpa", "ip6.arpa"]

# What the dnsmasq fixture serves.  "ptr": address -> name exactly as
# configured (tcpserver renders it lowercase with octal escapes: see
# "rendered"); "addresses": name -> addresses (A and AAAA); "cname".
RECORDS: Dict[str, Dict[str, object]] = {
    "ptr": {
        "127.0.0.1": "localhost.example",
        "::1": "localhost.example",
        "127.53.0.2": "We%ird.Example",                 # odd characters
        "127.53.0.3": "mismatch.example",               # forward is 127.53.0.99
        "127.53.0.4": "Mixed.Example",                  # forward matches
        "127.53.0.5": "we%ird:na\\001me.example",       # a real backslash
        "127.53.0.10": "www.example",
        "127.53.0.11": "dual.example",
        "2001:db8::11": "dual.example",
        "2001:db8::6": "v6only.example",
        "127.53.0.99": "mismatch.example",
        "127.53.0.20": "www.test",
        "127.54.0.1": "many.example",                   # ... up to 127.54.0.40
    },
    "rendered": {
        "127.53.0.2": "we\\045ird.example",
        "127.53.0.4": "mixed.example",
        "127.53.0.5": "we\\045ird\\072na\\134001me.example",
    },
    "addresses": {
        "localhost.example": ["127.0.0.1", "::1"],
        "mixed.example": ["127.53.0.4"],
        "mismatch.example": ["127.53.0.99"],
        "www.example": ["127.53.0.10"],
        "dual.example": ["127.53.0.11", "2001:db8::11"],
        "v6only.example": ["2001:db8::6"],
        "alias.example": ["127.53.0.10"],                # CNAME to www.example
        "many.example": ["127.54.0.%d" % i for i in range(1, 41)],  # > 512 bytes: TC
        "www.test": ["127.53.0.20"],
    },
    "cname": {"alias.example": "www.example"},
    "nxdomain": ["nx.example", "nothing.test"],     # names, AAAA and A
    # DNS lists (tests/test_dnsbl.py): client address -> (TXT, A) records
    # under bl.test (a list), allow.test (an anti-list)
    "dnsbl": {
        "127.0.80.2": {"bl.test": ("Listed: see https://bl.test/127.0.80.2", "127.0.0.2")},
        "127.0.80.3": {"bl.test": (None, "127.0.0.4")},             # A only
        "127.0.80.4": {"bl.test": ("Listed too", "127.0.0.2"), "allow.test": (None, "127.0.0.2")},
        "127.0.80.5": {"bl.test": ("Error: open resolver; https://check.spamhaus.org/"
                                   "returnc/pub/127.0.80.5/", "127.255.255.254")},
        "127.0.80.6": {"bl.test": (None, "127.255.255.254")},        # an A error only
        "::1": {"bl.test": ("IPv6 listed", "127.0.0.2")},
    },
    "no_ptr": ["127.53.0.200", "2001:db8::99"],     # PTR lookups -> NXDOMAIN
}


def random_loopback() -> str:
    """A random 127.x.y.z for a server of this run.  The second octet is
    128-254: clear of 127.0.0.0/16 (clients, oidentd), 127.53-55/16 (the
    records and the addresses where nothing listens), 127.113/16 (ident
    fakes); the last one is never 0 or 255.  ``SystemRandom``: two runs
    started at the same moment never share a seed."""
    pick = random.SystemRandom()
    return "127.%d.%d.%d" % (pick.randint(128, 254), pick.randint(0, 255), pick.randint(1, 254))


def dns_addresses() -> Iterator[str]:
    """The addresses to try for a DNS server on port 53: the one in
    ``$UCSPI_TEST_DNS_IP`` alone, else :data:`ADDRESS_TRIES` random ones."""
    fixed = os.environ.get(DNS_IP_VARIABLE)
    if fixed:
        yield fixed
        return
    for _ in range(ADDRESS_TRIES):
        yield random_loopback()


def _dnsmasq_args(ip: str) -> List[str]:
    args = [DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
            "--listen-address=" + ip, "--port=53", "--conf-file=/dev/null",
            "--pid-file=", "--user=root", "--group=root", "--log-facility=-",
            "--cache-size=0"]
    args += ["--local=/%s/" % d for d in LOCAL_DOMAINS]
    host_records = {"localhost.example": "127.0.0.1,::1", "www.example": "127.53.0.10",
                    "dual.example": "127.53.0.11,2001:db8::11",
                    "v6only.example": "2001:db8::6", "mismatch.example": "127.53.0.99",
                    "Mixed.Example": "127.53.0.4", "www.test": "127.53.0.20"}
    args += ["--host-record=%s,%s" % item for item in host_records.items()]
    for address in ("127.53.0.2", "127.53.0.3", "127.53.0.5"):
        rev = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
        args.append("--ptr-record=%s,%s" % (rev, RECORDS["ptr"][address]))  # type: ignore[index]
    args.append("--cname=alias.example,www.example")
    for address, lists in RECORDS["dnsbl"].items():              # type: ignore[union-attr]
        for base, (text, a_record) in lists.items():
            name = dnsbl_name(address, base)
            if text is not None:
                args.append("--txt-record=%s,%s" % (name, text))    # no comma in them
            if a_record is not None:
                args.append("--host-record=%s,%s" % (name, a_record))
    args += ["--host-record=many.example,%s" % a
             for a in RECORDS["addresses"]["many.example"]]  # type: ignore[index]
    return args


def dnsbl_name(address: str, base: str) -> str:
    """The name a DNS list is asked for ``address``: an IPv4 address
    reversed, an IPv6 one as 32 nibbles."""
    import ipaddress
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return ".".join(reversed(address.split("."))) + "." + base
    return ".".join(reversed(ip.packed.hex())) + "." + base


class DnsServer(NamedTuple):
    """The running dnsmasq: where it listens and what it serves."""

    ip: str
    port: int
    records: Dict[str, Dict[str, object]]
    pid: int


def udp_ask(ip: str, port: int, name: str, qtype: int, timeout: float = 0.5) -> bytes:
    """Send one query over UDP and return the raw reply (tests, probes)."""
    query = dnsmsg.build_query(dnsmsg.Question(dnsmsg.encode_name(name), qtype), 4242)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (ip, port))
        return sock.recv(65536)


class AddressInUse(Exception):
    """Something else listens on that address (another run, say)."""


def _start_dnsmasq(ip: str) -> "subprocess.Popen[bytes]":
    """dnsmasq on ``ip``:53, answering; :class:`AddressInUse` if that is
    taken; fails the test on any other trouble."""
    proc = subprocess.Popen(_dnsmasq_args(ip), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            if "Address already in use" in err:
                raise AddressInUse(err)
            pytest.fail("dnsmasq exited: " + err)
        # ready: it holds the address itself (an answer alone could come
        # from another run's server there, ours about to fail) and answers
        if listens_on(proc.pid, ip, 53):
            try:
                udp_ask(ip, 53, "localhost.example", dnsmsg.TYPE_A, 0.2)
                return proc
            except OSError:     # bound, not serving yet
                pass
        if time.monotonic() > deadline:
            stop(proc)
            pytest.fail("dnsmasq does not answer on %s:53" % ip)
        time.sleep(0.02)        # poll again


@contextlib.contextmanager
def dnsmasq() -> Iterator[DnsServer]:
    """A real dnsmasq on port 53 of this run's address (module docstring),
    stopped by pid at the end."""
    need(DNSMASQ)
    need_root()
    tried: List[str] = []
    for ip in dns_addresses():
        tried.append(ip)
        try:
            proc = _start_dnsmasq(ip)
        except AddressInUse:
            continue
        try:
            yield DnsServer(ip, 53, RECORDS, proc.pid)
        finally:
            stop(proc)
            if proc.stderr:
                proc.stderr.close()
        return
    if os.environ.get(DNS_IP_VARIABLE):
        pytest.fail(f"dnsmasq: port 53 of ${DNS_IP_VARIABLE} ({tried[0]}) is taken")
    pytest.fail("dnsmasq: port 53 taken on every address tried: " + " ".join(tried))


# -- packets for fakes ---------------------------------------------------------
class Query(NamedTuple):
    """A query as a fake server received it."""

    packet: bytes
    qid: int
    name: bytes            # wire form
    qtype: int
    tcp: bool
    source: Tuple[str, int]
    when: float


def rr(name: bytes, rtype: int, rdata: bytes, rclass: int = dnsmsg.CLASS_IN,
       ttl: int = 60) -> bytes:
    """One resource record; ``name`` is wire form (may be a pointer such
    as ``b"\\xc0\\x0c"`` for the question name)."""
    return name + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def response(query: Query, answers: Sequence[bytes] = (), rcode: int = 0, tc: bool = False,
             qid: Optional[int] = None, name: Optional[bytes] = None,
             qtype: Optional[int] = None, qclass: int = dnsmsg.CLASS_IN,
             qdcount: int = 1) -> bytes:
    """A response to ``query``; every field can be spoiled for tests."""
    flags = 0x8180 | rcode | (dnsmsg.FLAG_TC if tc else 0)
    header = struct.pack("!HHHHHH", query.qid if qid is None else qid, flags, qdcount,
                         len(answers), 0, 0)
    question = (query.name if name is None else name) + struct.pack(
        "!HH", query.qtype if qtype is None else qtype, qclass)
    return header + question + b"".join(answers)


# A handler returns what to send: a list of (delay in seconds, packet);
# [] sends nothing; None sends nothing and, over TCP, closes the connection.
# Over TCP each packet goes out with its 2-byte length in front, except a
# RawTcp, which is sent as it is; an empty RawTcp closes the connection.
Handler = Callable[[Query], Optional[List[Tuple[float, bytes]]]]


class RawTcp(bytes):
    """Bytes a fake sends over TCP as they are (no length in front, so
    any framing can be spoiled); ``RawTcp()`` closes the connection."""


class FakeDns:
    """A programmable UDP+TCP name server on ``ip`` (thread, own loop)."""

    def __init__(self, handler: Handler, ip: str = "127.53.1.1", port: int = 0,
                 tcp_handler: Optional[Handler] = None) -> None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.handler = handler
        self.tcp_handler = tcp_handler or handler
        self.queries: List[Query] = []
        for attempt in range(20):   # a kernel-chosen UDP port may be taken for TCP
            self.udp = socket.socket(family, socket.SOCK_DGRAM)
            self.listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                self.udp.bind((ip, port))
                self.ip, self.port = ip, self.udp.getsockname()[1]
                self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.listener.bind((ip, self.port))
                self.listener.listen(64)
                break
            except OSError as exc:
                self.udp.close()
                self.listener.close()
                if port or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.pending: List[Tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.conns: Dict[socket.socket, bytearray] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.running = True

    def __enter__(self) -> "FakeDns":
        self.sel.register(self.udp, selectors.EVENT_READ, self._udp_read)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        os.write(self.wake_w, b"x")
        self.thread.join(5)
        for sock in list(self.conns) + [self.udp, self.listener]:
            sock.close()
        self.sel.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.pending, (time.monotonic() + delay, self.seq, action))

    def _run(self) -> None:
        while self.running:
            timeout = None
            if self.pending:
                timeout = max(0.0, self.pending[0][0] - time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.data is not None:
                    self._survive(key.data, key.fileobj)
            while self.pending and self.pending[0][0] <= time.monotonic():
                self._survive(heapq.heappop(self.pending)[2])

    def _survive(self, action: Callable[..., None], *args: object) -> None:
        """Run one event; a peer's reset (say) ends that connection, never
        the fake (whose silence would fail every later test)."""
        try:
            action(*args)
        except OSError:
            if args and isinstance(args[0], socket.socket) and args[0] in self.conns:
                self._close(args[0])

    def _record(self, packet: bytes, tcp: bool, source: Tuple[str, int]) -> Optional[Query]:
        try:
            question, _, _ = dnsmsg.read_question(packet, 12)
        except dnsmsg.FormatError:
            return None
        query = Query(packet, int.from_bytes(packet[:2], "big"), question.name,
                      question.qtype, tcp, source, time.monotonic())
        self.queries.append(query)
        return query

    def _udp_read(self, sock: object) -> None:
        packet, source = self.udp.recvfrom(65536)
        query = self._record(packet, False, source[:2])
        for delay, data in (self.handler(query) or []) if query else []:
            self._later(delay, lambda data=data, source=source: self._sendto(data, source))

    def _sendto(self, data: bytes, source: Tuple[str, int]) -> None:
        try:
            self.udp.sendto(data, source)
        except OSError:
            pass

    def _accept(self, sock: object) -> None:
        conn, _ = self.listener.accept()
        self.conns[conn] = bytearray()
        self.sel.register(conn, selectors.EVENT_READ, self._tcp_read)

    def _close(self, conn: socket.socket) -> None:
        if conn in self.conns:
            del self.conns[conn]
            self.sel.unregister(conn)
            conn.close()

    def _tcp_read(self, conn: socket.socket) -> None:
        data = conn.recv(65536) if conn in self.conns else b""
        if not data:
            self._close(conn)
            return
        buf = self.conns[conn]
        buf += data
        if len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
            return
        packet = bytes(buf[2:2 + int.from_bytes(buf[:2], "big")])
        query = self._record(packet, True, conn.getpeername()[:2])
        replies = self.tcp_handler(query) if query else None
        if replies is None:
            self._close(conn)
            return
        for delay, reply in replies:
            framed = reply if isinstance(reply, RawTcp) else len(reply).to_bytes(2, "big") + reply
            self._later(delay, lambda framed=framed: self._tcp_send(conn, framed))

    def _tcp_send(self, conn: socket.socket, data: bytes) -> None:
        if isinstance(data, RawTcp) and not data:
            self._close(conn)
            return
        try:
            conn.sendall(data)
        except OSError:
            pass


@contextlib.contextmanager
def fake_dns_on_53(handler: Handler) -> Iterator[FakeDns]:
    """A :class:`FakeDns` on port 53 (so that DNSCACHEIP can name it) of
    an address of its own, as for :func:`dnsmasq`; skips without root."""
    for ip in dns_addresses():
        try:
            fake = FakeDns(handler, ip=ip, port=53)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            missing(f"a DNS server on {ip}:53 ({exc})")
        with fake:
            yield fake
        return
    pytest.fail("port 53 taken on every address tried")
