"""The one place where the server is wired together.

:func:`launcher` makes what starts the programs (spawn, a ``prog.so``,
or the TLS relay with its contexts, built here before the listener
exists), and :func:`build` makes the :class:`Service`: the reactor, the
lookup service, the helper children, the access sources (``-x``,
``-m``), admission, the environment builder, the reload registry, the
supervisor's notifier.  :mod:`.bootstrap` calls them in the order that
start-up needs (bind between the two, drop privileges after) and hands
the service to the accept loop (:class:`.loop.Server`), which only
accepts and runs the connections' steps.

A service does not know where its connections come from: the loop is
one driver of it; a connection already accepted by someone else (inetd
and ``tcp-env``: a socket on fd 0) is another.  Each driver gets its
:class:`~.conn.Context` from :meth:`Service.context` with its own
answers to the few questions only a driver can answer (admit, launch,
end).

Everything here runs before the privilege drop: what the options will
need is imported now, while the package and the interpreter's library
are still readable.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Tuple

from .. import environ
from ..errors import Fatal, UsageError
from ..log import Log, say
from ..options import Options
from ..policy import Policy
from ..plugin import entries as plugin_entries, is_shared_object
from ..proc import signals
from ..proc.launch import Launch, Program, Spawn
from ..proc.offload import Offload
from ..proc.reload import Reloads
from ..reactor import Reactor
from .access import Access
from .admission import Admission
from .conn import Connection, Context, descriptors_needed, lookup_plan, without_idle_steps
from .limits import Descriptors, Limit
from .listen import ACTIVATION_VARIABLES
from .lookups import Lookups
from .notify import VARIABLE as NOTIFY_VARIABLE, Notifier
from .proxied import Trusted

if TYPE_CHECKING:
    from ..rbl.lists import Settings as RblSettings

Admit = Callable[[Connection], bool]
LaunchOne = Callable[[Connection, Dict[bytes, bytes]], None]
End = Callable[[Connection], None]
Moved = Callable[[str, str], None]
Slot = Callable[[Connection, Callable[[], None]], bool]


# -- the launcher: made first, before the listener -----------------------------------
def program(opts: Options) -> Program:
    """Spawn the program, or call a ``prog.so`` in a child."""
    if is_shared_object(opts.argv[0]):
        from ..plugin.loader import SharedObject
        return SharedObject(opts.argv)
    return Spawn(opts.argv)


def tls_launcher(opts: Options, environ_: Mapping[str, str]) -> Launch:
    """The TLS launcher, its contexts built now: before the listener
    exists, with the privileges of start-up (as IndiMail does).

    Raises:
        UsageError: ``-N`` without OpenSSL 3.
        Fatal: ``unable to initialize TLS`` (after IndiMail's lines).
    """
    from ..tls import context
    from ..tls.launch import TlsLaunch
    from ..tls.settings import TlsError
    if opts.renegotiation and not context.renegotiation_supported():
        raise UsageError("-N needs OpenSSL 3 or newer")
    if opts.client_cert:
        from .. import clientcert  # noqa: F401  (the relays need it after the drop)
    setup = context.Setup.of(opts, environ_)
    log = Log(opts.verbosity)
    try:
        contexts = setup.build()
    except TlsError as exc:
        if opts.verbosity >= 1:
            for line in exc.lines:
                say(line.encode())
        raise Fatal("unable to initialize TLS" + (f": {exc.reason}" if exc.reason else "")
                    ) from None
    for note in setup.notes:
        if opts.verbosity >= 1:
            say(note.encode())
    for problem in setup.skipped:
        log.warning(problem)
    launch = program(opts)
    # a spawned program's relays are forked by a relay server of their
    # own (tls/relayserver.py); a prog.so lives in this process, and
    # PLUGINn objects and their working directory too
    alone = isinstance(launch, Spawn) and not plugin_entries(environ_)
    return TlsLaunch(launch, setup, contexts, log, opts.tls_details,
                     opts.handshake_timeout, opts.idle_timeout, opts.delayed_tls,
                     opts if alone else None)


def launcher(opts: Options) -> Launch:
    """The default launcher: spawn the program, call a ``prog.so``, or
    relay TLS (to either)."""
    return tls_launcher(opts, os.environ) if opts.tls else program(opts)


# -- the service ------------------------------------------------------------------
class Service:
    """What serves connections, whoever accepted them.

    Attributes:
        opts, log: the options and the log.
        reactor: the loop every part runs on.
        lookups: DNS and ident for the connections.
        offload: helper children for work the loop must not do.
        access: the access source (``-x``, ``-m``), or None.
        env: builds the programs' environments.
        admission: the limits and their counters.
        launch: starts the programs.
        reloads: what SIGHUP re-reads.
        notifier: the supervisor's notification socket, or None.
        trusted: the PROXY protocol's trusted sources, or None.
        connection: the kind of a TCP connection (TLS clients wait
            for their ClientHello before they take a slot).
    """

    def __init__(self, opts: Options, log: Log, reactor: Reactor, lookups: Lookups,
                 offload: Offload, access: Optional[Access], env: environ.Builder,
                 admission: Admission, launch: Launch, reloads: Reloads,
                 notifier: Optional[Notifier], trusted: Optional[Trusted]) -> None:
        self.opts = opts
        self.log = log
        self.reactor = reactor
        self.lookups = lookups
        self.offload = offload
        self.access = access
        self.env = env
        self.admission = admission
        self.launch = launch
        self.reloads = reloads
        self.notifier = notifier
        self.trusted = trusted
        #: the DNS lists (design: dnsbl-in-the-loop), or None
        self.dnsbl: Optional["RblSettings"] = None
        self.connection = Connection
        if opts.tls and not opts.delayed_tls:      # -w: the program speaks first
            from .conn import TlsConnection
            self.connection = TlsConnection

    def context(self, admit: Admit, launch: LaunchOne, end: End,
                moved: Optional[Moved] = None, slot: Optional[Slot] = None) -> Context:
        """The steps' view of the service, with a driver's answers."""
        ctx = Context(self.opts, self.reactor, self.log, self.lookups, self.access,
                      self.env, admit, launch, end, moved, slot)
        ctx.dnsbl = self.dnsbl
        return ctx

    def counts(self) -> Tuple[int, int]:
        """``(connections, limit)`` for status lines."""
        return self.admission.count, self.admission.limit.value


def _access(opts: Options, log: Log, reactor: Reactor, lookups: Lookups,
            offload: Offload) -> Optional[Access]:
    """The access sources of ``-x`` and ``-m`` (the cdb after the table)."""
    access: Optional[Access] = None
    if opts.rules is not None:
        from .rules_access import RulesAccess
        access = RulesAccess(opts.rules, opts.rules_missing_ok, opts.max_per_host, offload)
    if opts.mysql is not None:
        # -m: db.conf read and the database asked once, before the drop
        from .mysql_access import build as mysql
        access = mysql(opts.mysql, os.environ, reactor, lookups, log, access,
                       opts.max_per_host, offload)
    return access


def build(opts: Options, log: Log, limit: Limit, launch: Launch, trusted: Optional[Trusted],
          inherited: bool, environ_: Mapping[str, str] = os.environ,
          policy: Optional[Policy] = None, dnsbl: Optional["RblSettings"] = None,
          notify: bool = True) -> Service:
    """The service, after the listener exists and before the drop.

    Args:
        limit: the ``-c`` limit (its file read already).
        launch: from :func:`launcher`.
        trusted: the PROXY protocol's sources (:func:`.proxied.proxy_sources`).
        inherited: the listeners came from the supervisor (socket
            activation's variables are then not the programs').
        policy: every client's limits (:func:`ucspi.policy.from_environ`;
            default: ``-C`` alone).
        dnsbl: the DNS lists of the environment
            (:func:`ucspi.rbl.lists.from_environ`; default: none).
        notify: tell the supervisor of ``$NOTIFY_SOCKET`` (not for one
            connection on fd 0, ``tcp-env``).

    Raises:
        Fatal: the MySQL rules cannot be set up.
    """
    reactor = Reactor()
    lookups = Lookups(reactor, opts.ipv4_only, float(opts.ident_timeout))
    offload = Offload(reactor)
    access = _access(opts, log, reactor, lookups, offload)
    if dnsbl is not None and not dnsbl.lists and access is None:
        dnsbl = None                        # no list, and no rule to ask for one
    if not opts.unix:
        lookups.preload(opts.remote_host or opts.localname is None or dnsbl is not None,
                        opts.remote_info)
    if dnsbl is not None:
        from ..rbl import dialogue, lookup  # noqa: F401  (before the drop)
        from . import dnsbl as _in_the_loop  # noqa: F401
    notifier = Notifier.from_environ(environ_, log, reactor) if notify else None
    drop: Tuple[str, ...] = ACTIVATION_VARIABLES if inherited else ()
    drop += (NOTIFY_VARIABLE,)          # never the programs', notifier or not
    if policy is None:
        policy = Policy(opts.max_per_host)
    lists = dnsbl.lookups() if dnsbl is not None else 0
    admission = Admission(limit, Descriptors(descriptors_needed(opts, lists)), policy,
                          reactor.time)
    admission.track_networks = policy.maxconnc is not None or access is not None
    reloads = Reloads(log)
    service = Service(opts, log, reactor, lookups, offload, access,
                      environ.Builder(environ.inherited(drop)), admission, launch, reloads,
                      notifier, trusted)
    service.dnsbl = dnsbl
    service.connection = without_idle_steps(
        service.connection, proxied=trusted is not None,
        lookups=bool(lookup_plan(opts)) or (dnsbl is not None and bool(dnsbl.lists)),
        access=access is not None, rbl=dnsbl is not None)
    reloads.add("-c file", functools.partial(limit.reread, log))
    reloads.add("DNS settings", lookups.reload)
    launch.attach(reloads, service.counts)
    if notifier is not None:
        signals.at_term(notifier.stopping)
    return service
