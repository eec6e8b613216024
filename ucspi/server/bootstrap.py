"""tcpserver's start-up, and the one place errors become exit codes.

:func:`main` parses the options, sets up (the ``-c`` limit, the target
identity, the pid file, the signals, the listening sockets, the
privilege drop, the ``-1`` port line), then runs the loop
(:class:`.loop.Server`) until SIGTERM.  Inside the package errors are
typed exceptions (design: exit-codes); here they become 100 (usage, permanent) or 111
(temporary).  An ``OSError`` that no step worded (descriptors running
out for the signal pipe, a deleted working directory) is the last
resort: one fatal line with djb's error text, 111, never a traceback.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import sys
from typing import TYPE_CHECKING, Callable, List, Optional

from ..cli import read_command_line
from ..errors import EXIT_TEMP, EXIT_USAGE, Fatal, UsageError, errtext
from ..log import Log
from ..options import USAGE, Options, parse
from ..plugin import entries as plugin_entries
from ..plugin import has_dirs
from ..policy import from_environ as limits_from
from ..proc import signals
from ..proc.launch import Launch
from . import listen, pidfile, privs, service
from .checks import startup_warnings
from .limits import Limit
from .loop import Server
from .proxied import proxy_sources

if TYPE_CHECKING:
    from ..rbl.lists import Settings as RblSettings

#: makes the launcher from the options; the default spawns the program
LaunchFactory = Callable[[Options], Launch]


def _open_stdio() -> None:
    """Make sure fds 0, 1 and 2 are open (on /dev/null if they were
    closed), so that no socket or pipe of ours lands on them: the
    wake-up pipe on fd 1 would be overwritten by the ``-1`` clean-up."""
    while True:
        fd = os.open(os.devnull, os.O_RDWR)
        if fd > 2:
            os.close(fd)
            return


def _more_descriptors() -> None:
    """Raise the soft limit on open files to the hard one.  One process
    holds every connection being set up and its DNS and ident sockets
    (the C server spreads them over its children)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):
        pass


def _quiet_stdio(print_port: Optional[int]) -> None:
    if print_port is not None:
        try:
            os.write(1, b"%d\n" % print_port)
        except OSError:
            pass
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _absolute(opts: Options) -> None:
    """A ``PLUGINn_dir`` changes the working directory: the file arguments
    are made absolute first (design: shared-objects).  The ``-c`` file needs
    nothing: it is found in ``$CONTROLDIR`` and made absolute at start-up
    in any case."""
    for name in ("rules", "certfile", "certdir", "cafile", "crlfile", "pidfile"):
        value = getattr(opts, name)
        if value:
            setattr(opts, name, os.path.abspath(value))
    if opts.ciphers and os.path.isfile(opts.ciphers):
        opts.ciphers = os.path.abspath(opts.ciphers)
    if "/" in opts.argv[0]:
        opts.argv[0] = os.path.abspath(opts.argv[0])


def _setup(opts: Options, log: Log, make_launch: LaunchFactory) -> Server:
    """Start-up in its order (see the module docstring): the service is
    wired in :mod:`.service`, this says when."""
    plugins = None
    if plugin_entries(os.environ):
        from ..plugin.preload import Plugins     # ctypes, before the drop
        plugins = Plugins(os.environ)
        if has_dirs(os.environ):
            _absolute(opts)
    if "USE_DLMOPEN" in os.environ:
        log.warning("USE_DLMOPEN is not supported: objects are loaded into the "
                    "default namespace")
    limit = Limit.from_options(opts)
    ident = privs.resolve(opts.user, opts.uid, opts.gid, opts.groups)
    port = listen.parse_port(opts.port)
    trusted = proxy_sources(os.environ)
    policy = limits_from(os.environ, opts.max_per_host)
    dnsbl = _dnsbl(opts)
    launch = make_launch(opts)          # TLS: the contexts, before binding
    activated = listen.activated(os.environ, os.getpid())
    if opts.pidfile is not None:
        stale = opts.host if opts.unix and not activated else None
        pidfile.claim(opts.pidfile, stale)
    wakeup = signals.install()
    _more_descriptors()
    listener = _listen(opts, port, activated)
    # the service is built before the drop: it imports what the options
    # need while the package and the interpreter's library are readable
    served = service.build(opts, log, limit, launch, trusted, listener.inherited,
                           os.environ, policy, dnsbl)
    server = Server(served, listener, wakeup)
    privs.drop(ident)
    if plugins is not None:
        plugins.run(reload=False)
        served.reloads.add("plugins", plugins.reload)
    launch.ready()
    for problem in startup_warnings(opts):
        log.warning(problem)
    _quiet_stdio(listener.port if opts.print_port else None)
    return server


def _dnsbl(opts: Options) -> Optional["RblSettings"]:
    """The DNS lists of the environment, read only when some may be
    used (``$DNSBL``, or rules that may name lists); bad numbers are a
    usage error now, before anything is bound."""
    if opts.unix or not (os.environ.get("DNSBL") or opts.rules or opts.mysql):
        return None
    from ..rbl.lists import from_environ
    return from_environ(os.environ)


def _listen(opts: Options, port: int, activated: int) -> listen.Listener:
    """The listening sockets: inherited from the supervisor, bound to
    the UNIX path, or bound to the host and port."""
    if activated:
        return listen.inherited(activated)
    if opts.unix:
        listener = listen.open_unix(opts.host, opts.backlog)
        signals.at_term(functools.partial(listen.remove_own, listener.path))
        return listener

    def resolve(host: str) -> List[ipaddress.IPv6Address]:
        from ..dns.conf import DnsConfig
        from ..dns.lookup import qualify
        return qualify(DnsConfig.load(os.environ, opts.ipv4_only), host)

    ipv4, address, scope = listen.host_address(opts.host, opts.ipv4_only, resolve)
    scope = scope or listen.interface_index(opts.interface)
    return listen.open_listener(ipv4, address, scope, port, opts.backlog)


def main(argv: Optional[List[str]] = None, launch: LaunchFactory = service.launcher) -> int:
    """The tcpserver command.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).
        launch: makes the launcher (default: spawn the program); tests
            pass one that forks a test child body.

    Returns:
        The exit code (never on success: the server runs until SIGTERM).
    """
    args = sys.argv[1:] if argv is None else argv
    _open_stdio()
    log = Log(1)
    opts = read_command_line(parse, args, log, USAGE)
    if isinstance(opts, int):
        return opts
    log.verbosity = opts.verbosity
    try:
        server = _setup(opts, log, launch)
        server.run()
    except UsageError as exc:
        signals.run_at_term()
        log.line(b"fatal: " + os.fsencode(str(exc)))
        return EXIT_USAGE
    except Fatal as exc:
        signals.run_at_term()
        log.fatal(str(exc))
        return exc.code
    except KeyboardInterrupt:
        signals.run_at_term()
        return EXIT_TEMP
    except OSError as exc:      # the last resort: a system call nobody expected to fail
        signals.run_at_term()
        log.fatal(_unexpected(exc))
        return EXIT_TEMP
    return 0


def _unexpected(exc: OSError) -> str:
    """The fatal line for an ``OSError`` no step turned into a message:
    djb's error text, the file if there is one, and the working
    directory when it is what went (``os.getcwd`` fails for a deleted
    directory, and a relative file argument needs it)."""
    name = exc.filename
    if name is not None:
        shown = os.fsdecode(name) if isinstance(name, (str, bytes)) else str(name)
        return f"unable to start: {shown}: {errtext(exc)}"
    if isinstance(exc, FileNotFoundError):
        try:
            os.getcwd()
        except OSError as cwd:
            return f"unable to find the working directory: {errtext(cwd)}"
    return f"unable to start: {errtext(exc)}"
