"""One accepted connection, from ``accept`` to the start of its program.

The parent runs many of these at once (design: one-event-loop).
A connection is a sequence of steps; each calls :meth:`Connection.next`
when it is done, at once or from a reactor callback:

1. **header**: for a connection from a source trusted by ``PROXY_FROM``,
   the PROXY protocol header (:mod:`.proxied`), whose addresses then
   replace the socket's in every later step; nothing for the others;
2. **socket**: socket options (``-o``/``-O``, ``-d``/``-D``), then the
   banner (``-B``), written without blocking within
   :data:`ucspi.timeouts.BANNER`, then the local address;
3. (TLS only) **hello** and **slot**: the client's first record, its
   ClientHello, is waited for (:mod:`.hello`), then a ``-c`` slot, which
   a TLS client takes only now (:class:`TlsConnection`);
4. **lookups**: at the same time, the PTR of the local address (unless
   ``-l``; a fresh answer is reused), the PTR of the client (unless
   ``-H``) with the forward check of ``-p``, the ident query (unless
   ``-R``);
5. **access**: the access source (the ``-x`` cdb, ``-m`` MySQL rules)
   answers through a callback: allowed with environment changes and a
   per-host limit, denied, or failed;
6. **admit**: the second moment of admission (:mod:`.admission`), for
   a connection whose limits were not all known at accept (rules, a
   PROXY header);
7. **rbl**: with ``DNSBL``, a listed client (or one a rule refuses with
   ``RBLSMTPD``) gets rblsmtpd's dialogue from the loop instead of a
   program (:mod:`.dnsbl`); the lists were asked during the lookups;
8. **launch**: the environment is built and the program started.

The steps see a narrow :class:`Context` (options, reactor, log, lookup
service, access source, environment builder, and the few things only
the driver of the connections can do: admit, launch, end), never the
server itself, so they can be tested with a fake context, and driven by
something else than the accept loop.  Nothing here blocks; every lookup
has its own deadline inside its driver.

A connection is a descriptor first: the socket object (whose creation
costs a ``getsockname`` in CPython) is made only when a step needs one,
for a banner, a socket option or the local address; a listener bound to
one address gives the local address without asking the kernel.  So with
``-HRl`` and no banner a connection costs no system call of its own
between ``accept`` and the spawn.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar, Union

from .. import address, timeouts
from ..environ import Builder, Change, Endpoints, connection_changes
from ..errors import errtext
from ..log import Log, connection_fields, safe
from ..options import Options
from ..reactor import Cancellable, Reactor, Timer
from ..tls.failure import timed_out
from .access import Access, Verdict
from .hello import HelloWait
from .lookups import DESCRIPTORS, LookupService
from .proxied import HeaderReader

if TYPE_CHECKING:
    from ..proxy import Header
    from ..rbl import lists as rbl_lists
    from ..rbl.lookup import Answers


F = TypeVar("F", bound=Callable[..., None])
C = TypeVar("C", bound="Connection")


def guarded(method: F) -> F:
    """The connection's exception boundary, around each step and each
    callback that can enter it from the reactor: whatever a step raises
    ends this connection alone (:meth:`Connection.fail`), freeing its
    ``-c`` slot and per-host count."""
    @functools.wraps(method)
    def run(self: "Connection", *args: Any) -> None:
        try:
            method(self, *args)
        except Exception as exc:
            self.fail(exc)
    return run  # type: ignore[return-value]


def render_address(text: str, v6sock: bool, force6: bool) -> Tuple[str, str, bool]:
    """(primary form, IPv6 form, IPv4?) of an address from the socket:
    the primary form is dotted for IPv4 (and IPv4-mapped) addresses
    unless ``-6`` (design: mapped-addresses); the IPv6 form shows them as ``::ffff:a.b.c.d``."""
    if v6sock:
        plain, is_mapped = address.unmap(text)
        six = address.mapped_text(plain) if is_mapped else plain
        if is_mapped and not force6:
            return plain, six, True
        return six, six, is_mapped
    six = address.mapped_text(text)
    return (six if force6 else text), six, True


def lookup_plan(opts: Options) -> Tuple[str, ...]:
    """The lookups the lookups step may make for one connection, by the
    names of :data:`.lookups.DESCRIPTORS`, in the order they are
    started: ident (``-r``) first, since its answer comes from the
    client's host (or a forking identd) and is nearly always the last
    one in, then the local PTR (without ``-l``) and the client's PTR
    (``-h``; with ``-p`` its forward check)."""
    if opts.unix:
        return ()
    plan: Tuple[str, ...] = ()
    if opts.remote_info:
        plan += ("info",)
    if opts.localname is None:
        plan += ("name",)
    if opts.remote_host:
        plan += ("paranoid" if opts.paranoid else "host",)
    return plan


def descriptors_needed(opts: Options, lists: int = 0) -> int:
    """The most descriptors one connection holds in the parent at once:
    its socket, and those of the lookups it may make at the same time
    (:func:`lookup_plan`, and ``lists`` DNS lists) or, later and one at a
    time, those of the host names of its ``-m`` rules."""
    lookups = sum(DESCRIPTORS[kind] for kind in lookup_plan(opts)) + lists
    rules = DESCRIPTORS["addresses"] if opts.mysql is not None and not opts.unix else 0
    return 1 + max(lookups, rules)


class Context:
    """What a connection's steps may use.

    Attributes:
        opts: the options.
        reactor: the loop.
        log: the log.
        lookups: DNS and ident (:class:`.lookups.LookupService`).
        access: the access source, or None (no ``-x``, no ``-m``).
        env: builds the program's environment.
        admit: ``(connection)``: the second moment of admission, with
            the client's address and the limit its rules gave; False
            when it was refused (the driver has logged and ended it).
        slot: ``(connection, grant)``: a TLS connection asks for its
            ``-c`` slot: True if it has it now, else ``grant()`` is
            called when it does.
        launch: ``(connection, environment)``: start the program.
        end: ``(connection)``: it ended without a program.
        moved: ``(old ip, new ip)``: a PROXY header changed the
            client's address (the per-address counts follow it).
        plan: the lookups step's :func:`lookup_plan`.
    """

    __slots__ = ("opts", "reactor", "log", "lookups", "access", "env", "admit", "slot",
                 "launch", "end", "moved", "localname", "kill_ip_options", "plan", "dnsbl")

    def __init__(self, opts: Options, reactor: Reactor, log: Log, lookups: LookupService,
                 access: Optional[Access], env: Builder,
                 admit: Callable[["Connection"], bool],
                 launch: Callable[["Connection", Dict[bytes, bytes]], None],
                 end: Callable[["Connection"], None],
                 moved: Optional[Callable[[str, str], None]] = None,
                 slot: Optional[Callable[["Connection", Callable[[], None]], bool]] = None
                 ) -> None:
        self.opts = opts
        self.reactor = reactor
        self.log = log
        self.lookups = lookups
        self.access = access
        self.env = env
        self.admit = admit
        self.slot = slot
        self.launch = launch
        self.end = end
        self.moved = moved
        self.localname = None if opts.localname is None else os.fsencode(opts.localname)
        # -O: only where a source-routed SYN can arrive at all
        self.kill_ip_options = opts.kill_ip_options and source_routes_accepted()
        self.plan = lookup_plan(opts)
        #: the DNS lists of tcpserver's environment (and of rules), or None
        self.dnsbl: Optional["rbl_lists.Settings"] = None


def source_routes_accepted(path: str = "/proc/sys/net/ipv4/conf/all/accept_source_route"
                           ) -> bool:
    """Whether the kernel may deliver IPv4 packets with a source route.

    ``-O`` removes the IP options a client sent, so that no reply follows
    a route the client chose (djb's defence against address spoofing).
    Linux drops every source-routed packet unless ``accept_source_route``
    is set both for "all" and for the interface, so where "all" is 0 the
    option-kill can never find a source route and is skipped (one
    ``setsockopt`` less per connection).  Anywhere else (no such file,
    another value) it is done as ucspi-tcp does.
    """
    try:
        with open(path, "rb") as handle:
            return handle.read().strip() != b"0"
    except OSError:
        return True


class Connection:
    """The state of one connection until its program starts.

    Set by the driver before :meth:`start`: ``proxied`` for a connection
    from a source that ``PROXY_FROM`` trusts; ``later`` when admission
    has a second look once the client is known (rules, a PROXY header).
    ``slot`` says whether the connection holds a ``-c`` slot.
    """

    proxied = False
    later = False
    slot = True
    #: the rules denied it (the connection ended with a ``deny`` line)
    denied = False
    #: what the DNS lists answered during the lookups step
    rbl_answers: Optional[Tuple["Answers", "Answers"]] = None
    STEPS: Tuple[Callable[["Connection"], None], ...] = ()

    #: a client of a UNIX listener (admission counts it as the address "")
    unix = False

    def __init__(self, ctx: Context, sock: Union[socket.socket, int], peer: Any, v6sock: bool,
                 local: Optional[Tuple[Any, ...]] = None) -> None:
        self.ctx = ctx
        if isinstance(sock, int):       # a descriptor from accept: the object comes later
            self._sock: Optional[socket.socket] = None
            self.fd = sock
            self._family = socket.AF_INET6 if v6sock else socket.AF_INET
        else:
            self._sock = sock
            self.fd = sock.fileno()
        self.local = local    # the listener's own address, when it has one
        force6 = ctx.opts.force_ipv6
        self.v4client: bool
        remote, remote6, self.v4client = render_address(peer[0], v6sock, force6)
        self.ep = Endpoints(
            proto6=force6 or not self.v4client, v6sock=v6sock,
            local_ip="", local_ip6="", local_port=0,
            remote_ip=remote, remote_ip6=remote6, remote_port=peer[1],
        )
        self.scope = peer[3] if v6sock and not self.v4client else 0
        self.banner = b""
        self.banner_timer: Optional[Timer] = None
        self.pending = 0
        self.handles: List[Cancellable] = []
        self.changes: List[Change] = []
        self.max_per_host = ctx.opts.max_per_host
        self.closed = False
        self._step = 0

    @property
    def sock(self) -> socket.socket:
        """The socket object, made at the first use (a stream socket of
        the family the listener has)."""
        if self._sock is None:
            self._sock = socket.socket(self._family, socket.SOCK_STREAM, 0, self.fd)
        return self._sock

    # -- the steps ----------------------------------------------------------
    def start(self) -> None:
        """Run the steps from the first."""
        self._step = 0
        self.next()

    def next(self) -> None:
        """The current step is done: run the next one."""
        if self.closed:
            return
        step = self.STEPS[self._step]
        self._step += 1
        try:
            step(self)
        except Exception as exc:
            self.fail(exc)

    def _header(self) -> None:
        if not self.proxied:
            self.next()
            return
        reader = HeaderReader(self.ctx.reactor, self.sock, self._got_header, self._bad_header)
        self.handles.append(reader)
        reader.start()

    @guarded
    def _bad_header(self, reason: str) -> None:
        self.ctx.log.drop(f"bad PROXY header from {self.ep.remote_ip}: {reason}")
        self.end()

    @guarded
    def _got_header(self, header: "Header") -> None:
        self.handles = []
        if not header.local:
            old = self.ep.remote_ip
            self._readdress(header)
            if self.ctx.moved is not None:
                self.ctx.moved(old, self.ep.remote_ip)
        self.next()

    def _readdress(self, header: "Header") -> None:
        """The header's addresses replace the socket's (design: proxy-protocol); IPv4 in
        the header, or IPv4-mapped, is an IPv4 client (design: mapped-addresses)."""
        src, dst = _six(header.src_ip, header.family), _six(header.dst_ip, header.family)
        ep = self.ep
        v6sock = ep.v6sock or not (src.startswith(address.MAPPED_PREFIX)
                                   and dst.startswith(address.MAPPED_PREFIX))
        if not v6sock:
            src, dst = address.strip_mapped(src), address.strip_mapped(dst)
        force6 = self.ctx.opts.force_ipv6
        ep.remote_ip, ep.remote_ip6, self.v4client = render_address(src, v6sock, force6)
        ep.remote_port = header.src_port
        ep.v6sock = v6sock
        ep.proto6 = force6 or not self.v4client
        self.local = (dst, header.dst_port)
        self.scope = 0

    def _socket(self) -> None:
        opts = self.ctx.opts
        if self.ctx.kill_ip_options and self.v4client:
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
            except OSError:
                pass
        if opts.nodelay:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if opts.banner:
            self.banner = opts.banner
            self.sock.setblocking(False)
            self._write_banner()
        else:
            self._local()

    @guarded
    def _write_banner(self) -> None:
        try:
            sent = self.sock.send(self.banner)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.drop("unable to print banner", exc)
            return
        self.banner = self.banner[sent:]
        reactor = self.ctx.reactor
        if self.banner:
            if self.banner_timer is None:
                self.banner_timer = reactor.call_later(timeouts.BANNER, self._banner_late)
                self.handles.append(self.banner_timer)
            reactor.add_writer(self.fd, self._write_banner)
            return
        if self.banner_timer is not None:
            self.banner_timer.cancel()
            self.handles.remove(self.banner_timer)
            self.banner_timer = None
        reactor.remove_writer(self.fd)
        self.sock.setblocking(True)
        self._local()

    @guarded
    def _banner_late(self) -> None:
        """A client that does not read cannot hold its slot for ever."""
        self.banner_timer = None
        self.drop("unable to print banner", TimeoutError())

    def _local(self) -> None:
        try:
            self.know_local()
        except OSError as exc:
            self.drop("unable to get local address", exc)
            return
        self.next()

    def know_local(self) -> None:
        """Fill in the local address (from the listener when it is bound
        to one, else from the socket) and the ``-l`` name.  Raises
        OSError."""
        local = self.local if self.local is not None else self.sock.getsockname()
        ep = self.ep
        if ep.local_host is None:
            ep.local_host = self.ctx.localname
        ep.local_ip, ep.local_ip6, _ = render_address(local[0], ep.v6sock, self.ctx.opts.force_ipv6)
        ep.local_port = local[1]
        if ep.v6sock and not self.v4client and self.scope:
            try:
                ep.interface = socket.if_indextoname(self.scope).encode()
            except OSError:
                ep.interface = b"[unknown]"

    def _lookups(self) -> None:
        ctx, ep = self.ctx, self.ep
        lookups = ctx.lookups
        self.pending = 1  # held until every lookup below has been started
        if ctx.localname is not None:
            ep.local_host = ctx.localname
        for kind in ctx.plan:
            if kind == "name":
                known = lookups.known_local_name(ep.local_ip6)
                if known is not None:
                    ep.local_host = known[0]
                    continue
                handle = lookups.name(ep.local_ip6, self.v4client, self._got_local,
                                      self._starved)
            elif kind == "info":
                v4 = self.v4client
                if self.proxied:    # the header's local address is the proxy's
                    local = address.wildcard(v4)
                else:
                    local = address.strip_mapped(ep.local_ip6) if v4 else ep.local_ip6
                remote = address.strip_mapped(ep.remote_ip6) if v4 else ep.remote_ip6
                handle = lookups.info(local, remote, ep.remote_port, ep.local_port,
                                      self.scope, self._got_info, self._starved)
            else:
                handle = lookups.host(ep.remote_ip6, self.v4client, kind == "paranoid",
                                      self._got_remote, self._starved)
            self.pending += 1
            self.handles.append(handle)
        if ctx.dnsbl is not None and ctx.dnsbl.lists:
            self.pending += 1
            self.handles.append(lookups.lists(ep.remote_ip, ctx.dnsbl, self._got_lists))
        self._looked_up()

    @guarded
    def _got_lists(self, answers: "Answers", allowed: "Answers") -> None:
        self.rbl_answers = (answers, allowed)
        self._looked_up()

    @guarded
    def _got_local(self, name: Optional[str], error: Optional[BaseException]) -> None:
        if name:
            self.ep.local_host = name.encode()
        if error is None:
            self.ctx.lookups.remember_local_name(self.ep.local_ip6, self.ep.local_host)
        self._looked_up()

    @guarded
    def _got_remote(self, name: Optional[str], failed: Optional[str]) -> None:
        if name:
            self.ep.remote_host = name.encode()
        if failed:
            self.ep.paranoid = failed.encode()
        self._looked_up()

    @guarded
    def _got_info(self, info: Optional[bytes]) -> None:
        if info is not None:
            info = info.split(b"\0", 1)[0]   # as a C string would end there
        self.ep.remote_info = info
        self._looked_up()

    @guarded
    def _starved(self, exc: OSError) -> None:
        """A lookup could not get a descriptor before its deadline: the
        connection is dropped, never decided as if there were no answer."""
        if not self.closed:
            self.ctx.log.drop_from(self.ep.remote_ip,
                                   f"unable to start a lookup: {errtext(exc)}")
            self.end()

    def _looked_up(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.handles = []
            self.next()

    def _access(self) -> None:
        access = self.ctx.access
        if access is None:
            self.next()
        else:
            access.check(self.ep, self._verdict)

    @guarded
    def _verdict(self, verdict: Verdict) -> None:
        if self.closed:
            return
        if verdict.failure is not None:
            self.drop(*verdict.failure)
        elif verdict.quiet:
            self.end()
        elif not verdict.allow:
            self.denied = True
            self.ctx.log.verdict(False, 0, self.fields())
            self.end()
        else:
            self.changes = verdict.changes
            self.max_per_host = verdict.max_per_host
            self.next()

    def _admit(self) -> None:
        if not self.later or self.ctx.admit(self):
            self.next()

    def _rbl(self) -> None:
        """DNSBL: refuse a listed client with rblsmtpd's dialogue."""
        base = self.ctx.dnsbl
        if base is None:
            self.next()
            return
        from ..rbl.lists import rblsmtpd_variable, rule_rblsmtpd
        ip = self.ep.remote_ip
        settings = base.with_rule(self.changes, self.bad_rule) if self.changes else base
        if not settings.lists:
            self.next()
            return
        forced = rblsmtpd_variable(rule_rblsmtpd(self.changes), ip)
        if forced is not None:
            self._listed(forced._replace(base="RBLSMTPD") if forced.refuse else forced, settings)
        elif settings.lists == base.lists and settings.allow == base.allow \
                and self.rbl_answers is not None:
            self._decide(settings, *self.rbl_answers)
        else:                              # the rule asks other lists: ask them now
            self.handles.append(self.ctx.lookups.lists(
                ip, settings, lambda answers, allowed: self._asked(settings, answers, allowed)))

    @guarded
    def _asked(self, settings: "rbl_lists.Settings", answers: "Answers",
               allowed: "Answers") -> None:
        self.handles = []
        self._decide(settings, answers, allowed)

    def _decide(self, settings: "rbl_lists.Settings", answers: "Answers",
                allowed: "Answers") -> None:
        from ..rbl.lists import decide
        from .dnsbl import log_errors
        log_errors(self.ctx.log, self.ep.remote_ip, settings, answers, allowed)
        self._listed(decide(settings.lists, answers, allowed, settings.fail_closed,
                            settings.bounce), settings)

    def _listed(self, decision: "rbl_lists.Decision", settings: "rbl_lists.Settings") -> None:
        if not decision.refuse:
            self.next()
            return
        from ..rbl.dialogue import refusal_line
        from .dnsbl import RblDialogue, log_refusal, suffix
        log = self.ctx.log
        log_refusal(self.ep.remote_ip, refusal_line(decision.code, decision.text),
                    log.verbosity)
        log.verdict(False, 0, self.fields() + suffix(decision))
        talk = RblDialogue(self.ctx.reactor, self.sock, decision, settings.greeting,
                           settings.dialogue_timeout, self.end)
        self.handles.append(talk)
        talk.start()

    def bad_rule(self, problem: str) -> None:
        """A rule of this client holds a bad value: one warning."""
        self.ctx.log.warning(f"rule for {self.ep.remote_ip}: {problem}")

    def _launch(self) -> None:
        ep = self.ep
        self.ctx.launch(self, self.ctx.env.build(ep.v6sock, connection_changes(ep), self.changes))

    # -- end ----------------------------------------------------------------
    def origin(self) -> str:
        """Where the connection comes from, for the ``pid`` line."""
        return self.ep.remote_ip

    def fields(self) -> bytes:
        """The fields of the ``ok``/``deny`` line."""
        ep = self.ep
        return connection_fields(ep.local_host, ep.local_ip, ep.local_port,
                                 ep.remote_host, ep.remote_ip, ep.remote_info,
                                 ep.remote_port)

    def drop(self, what: str, exc: BaseException) -> None:
        """``warning: dropping connection, <what>: <err>``; end it."""
        self.ctx.log.drop(f"{what}: {errtext(exc)}")
        self.end()

    def fail(self, exc: BaseException) -> None:
        """An unexpected error: one warning naming the client, then end."""
        if not self.closed:
            self.ctx.log.drop_from(self.ep.remote_ip, f"internal error: {type(exc).__name__}: "
                                   f"{safe(str(exc), True).decode()}")
            self.end()

    def give_way(self) -> None:
        """Dropped to make room: a TLS client still waiting for its
        ClientHello or a slot, when the server has no descriptor left
        for a new client (:class:`TlsConnection`)."""
        self.ctx.log.drop_from(self.ep.remote_ip, "no TLS handshake yet while the server "
                               "needs room")
        self.end()

    def end(self) -> None:
        """End the connection without a program."""
        if not self.closed:
            self.close()
            self.ctx.end(self)

    def close(self) -> None:
        """Forget this connection: cancel lookups, close the socket."""
        if self.closed:
            return
        self.closed = True
        for handle in self.handles:
            handle.cancel()
        self.handles = []
        reactor = self.ctx.reactor
        if reactor.watching(self.fd):
            reactor.forget(self.fd)
        if self._sock is not None:
            self._sock.close()
        else:
            os.close(self.fd)


def _six(ip: str, family: Optional[str]) -> str:
    """An address of a PROXY header in IPv6 text form."""
    return address.mapped_text(ip) if family == "4" else ip


class TlsConnection(Connection):
    """A client of a TLS server (immediate TLS): it takes its ``-c``
    slot only once its ClientHello has arrived, so that clients that
    never finish one hold no slot (design: tls-handshakes-and-slots).
    Until then it is one of the server's waiting clients, and
    the driver may drop the one that has waited longest when it needs
    room (:meth:`give_way`)."""

    slot = False

    def _hello(self) -> None:
        timeout = self.ctx.opts.handshake_timeout
        deadline = self.ctx.reactor.time() + timeout if timeout else None
        wait = HelloWait(self.ctx.reactor, self.sock, deadline, self._hello_done,
                         self._hello_late)
        self.handles.append(wait)
        wait.start()

    @guarded
    def _hello_done(self) -> None:
        self.handles = []
        self.next()

    @guarded
    def _hello_late(self) -> None:
        timed_out(self.ctx.log)
        self.end()

    def _slot(self) -> None:
        assert self.ctx.slot is not None
        if self.ctx.slot(self, self._granted):
            self.slot = True
            self.next()

    @guarded
    def _granted(self) -> None:
        self.slot = True
        self.next()



Connection.STEPS = (
    Connection._header, Connection._socket, Connection._lookups,
    Connection._access, Connection._admit, Connection._rbl, Connection._launch,
)
TlsConnection.STEPS = (
    Connection._header, Connection._socket, TlsConnection._hello,  # type: ignore[assignment]
    TlsConnection._slot, Connection._lookups, Connection._access,
    Connection._admit, Connection._rbl, Connection._launch,
)


def without_idle_steps(kind: Type[C], proxied: bool, lookups: bool, access: bool,
                       rbl: bool) -> Type[C]:
    """``kind`` without the steps that can do nothing for any connection
    of a service: the PROXY header without trusted sources, the lookups
    step without a lookup or a DNS list, the access step without an access
    source, admission's second moment when the first decides every client
    (no rules, no PROXY header), the DNSBL step without lists.  The plain
    path then makes three step calls instead of seven.  Each flag says
    whether that part of the service exists; the steps themselves still
    check, so the full list is always correct too (``tcp-env`` uses it).
    """
    idle = set()
    if not proxied:
        idle.add(Connection._header)
    if not lookups:
        idle.add(Connection._lookups)
    if not access:
        idle.add(Connection._access)
    if not (access or proxied):
        idle.add(Connection._admit)
    if not rbl:
        idle.add(Connection._rbl)
    steps = tuple(step for step in kind.STEPS if step not in idle)
    if steps == kind.STEPS:
        return kind
    return type(kind.__name__, (kind,), {"STEPS": steps, "__doc__": kind.__doc__,
                                          "__module__": kind.__module__,
                                          "__qualname__": kind.__qualname__})
