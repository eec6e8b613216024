"""The TLS relay server: a small process that forks the relay children
(issue 20; design note "TLS").

Forking the server for each TLS connection copies a large process: the
fork copies its page tables, the loop then takes a copy-on-write fault
for every page it writes while a relay child still shares it, and every
fork runs the at-fork hooks that site packages register (a ``.pth``
that imports ``threading`` adds about 0.4 ms to each).  So a TLS server
whose program is spawned (not a ``prog.so``, no ``PLUGINn``) starts,
before it drops its privileges, one more interpreter with ``-S``, the
relay server (:mod:`ucspi.server.relays`).  It gets the server's
options, builds the same TLS contexts, drops the same privileges and
then forks the relays: the server hands it each connection's
descriptor with its environment over a ``SOCK_SEQPACKET`` pair
(``socket.send_fds``) and gets the relay's pid back; the relay server
reaps the relays and writes ``(pid, wait status)`` records into a pipe
that the server reads when its SIGCHLD handler wakes it (the relay
server sends SIGCHLD after each batch), so the ``end`` line and the
``-c`` slot of a relay are as before.  This module is the server's
side (:class:`RelayServer`) and the protocol.

Messages on the pair (one per packet):

* server -> relay server: ``O`` + the pickled options (once, first);
  ``C`` + count, limit + ``NAME=value\\0``... with the connection's
  descriptor; ``H`` (SIGHUP: build the contexts again, keep the old
  ones on failure).
* relay server -> server: ``R`` (ready) or ``X`` + why not (once);
  ``P`` + the relay's pid, or ``E`` + an errno, for each ``C``.

The server falls back to forking relays itself when the relay server
cannot start, dies or stops answering (one warning); relays it had
started and whose exits it can no longer report end with status 111.
When the server goes (SIGTERM), the relay server stops taking
connections, waits for its relays and exits.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import sys
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from ..errors import EXIT_TEMP, errtext
from ..proc.signals import SIGDEF

if TYPE_CHECKING:
    from ..options import Options

OPTIONS = b"O"
CONNECTION = b"C"
RELOAD = b"H"
READY = b"R"
FAILED = b"X"
PID = b"P"
ERROR = b"E"
DONE = b"D"

HEAD = struct.Struct("=cII")        # CONNECTION, count, limit
NUMBER = struct.Struct("=ci")       # PID or ERROR and its number
EXIT = struct.Struct("=ii")         # pid, wait status: 8 bytes, one atomic write
#: the largest connection message (the environment) sent; a larger one
#: is relayed by a child of the server itself
MESSAGE_MAX = 256 * 1024
#: seconds to wait for the relay server's ``R``, and for each answer
START_WAIT = 30.0
ANSWER_WAIT = 10.0

#: the relay server's ``-c`` program: argv[1] goes on the path, argv[2]
#: is the package's dotted name (``ucspi``, or a vendored copy's).  The
#: folder goes last, after the standard library: when the package is
#: installed, it is site-packages, which may hold old backports with the
#: library's own names (``typing``, ``enum``); and the working directory
#: (``-c``'s first entry) is not looked in, where another copy may be.
#: A failure to import is said on the control socket (``X``), never as a
#: traceback in the log.
_BOOT = """import sys
try:
    import importlib
    if sys.path[:1] == ['']:
        del sys.path[0]
    sys.path.append(sys.argv[1])
    main = importlib.import_module(sys.argv[2] + '.server.relays').main
except Exception as exc:
    import socket
    why = 'unable to import %s: %s: %s' % (sys.argv[2], type(exc).__name__, exc)
    try:
        ctl = socket.socket(fileno=int(sys.argv[3]))
        ctl.settimeout(5)
        ctl.recv(1 << 20)      # the options: unread, they would reset the socket
        ctl.send(b'X' + why.encode('utf-8', 'replace'))
    except OSError:
        pass
    sys.exit(111)
sys.exit(main(sys.argv[3:]))
"""


class Gone(Exception):
    """The relay server is not there, or no longer answers."""


def package_place() -> Tuple[str, str]:
    """Where the package is: the folder to put on ``sys.path`` and the
    package's dotted name (``ucspi``, or ``myproj._vendor.ucspi`` for a
    vendored copy; a zipapp's folder is the archive)."""
    package = __name__.rsplit(".", 2)[0]
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in package.split("."):
        folder = os.path.dirname(folder)
    return folder, package


# -- the server's side -----------------------------------------------------------
class RelayServer:
    """The server's handle on its relay server.

    Attributes:
        pid: the relay server's pid.
        running: the relays it started that have not been reported ended.
    """

    def __init__(self, pid: int, ctl: socket.socket, exits: int) -> None:
        self.pid = pid
        self.ctl = ctl
        self.exits: Optional[int] = exits
        self.running: Dict[int, int] = {}        # pid -> connections (a relay serves many)
        self.alive = True

    @classmethod
    def spawn(cls, opts: "Options") -> "RelayServer":
        """Start the relay server (``python -S``, fds 0 and 1 on
        /dev/null, fd 2 shared) and send it the options.

        Raises:
            Gone: it could not be started.
        """
        import pickle
        if not sys.executable:
            raise Gone("no interpreter to start")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        exit_r, exit_w = os.pipe()
        try:
            theirs.set_inheritable(True)
            os.set_inheritable(exit_w, True)
            argv = [sys.executable, "-S", "-c", _BOOT, *package_place(),
                    str(theirs.fileno()), str(exit_w), str(os.getpid())]
            pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
                (os.POSIX_SPAWN_DUP2, 0, 1)], setsigdef=SIGDEF, setsigmask=())
        except OSError as exc:
            ours.close()
            os.close(exit_r)
            raise Gone(f"unable to start it: {errtext(exc)}") from None
        finally:
            theirs.close()
            os.close(exit_w)
        os.set_blocking(exit_r, False)
        server = cls(pid, ours, exit_r)
        try:
            ours.settimeout(ANSWER_WAIT)
            ours.sendall(OPTIONS + pickle.dumps(opts, pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            server.lost()
            raise Gone(f"unable to talk to it: {errtext(exc)}") from None
        return server

    def wait_ready(self, timeout: float = START_WAIT) -> None:
        """Wait for ``R``.  Raises Gone with the relay server's reason."""
        try:
            self.ctl.settimeout(timeout)
            answer = self.ctl.recv(4096)
        except OSError as exc:
            self.lost(kill=isinstance(exc, socket.timeout))
            raise Gone(f"no answer: {errtext(exc)}") from None
        finally:
            if self.alive:
                self.ctl.settimeout(ANSWER_WAIT)
        if answer != READY:
            self.lost()
            why = answer[1:].decode(errors="replace") if answer[:1] == FAILED else "it exited"
            raise Gone(why or "it exited")

    def start(self, fd: int, env: Dict[bytes, bytes], count: int, limit: int) -> Optional[int]:
        """Hand over one connection; the relay's pid, or None when the
        message would be too large (the server forks that relay).

        Raises:
            OSError: the relay server could not fork.
            Gone: the relay server is not there.
        """
        if not self.alive:
            raise Gone("it is gone")
        message = HEAD.pack(CONNECTION, count, limit) + b"\0".join(
            name + b"=" + value for name, value in env.items())
        if len(message) > MESSAGE_MAX:
            return None
        try:
            socket.send_fds(self.ctl, [message], [fd])
            answer = self.ctl.recv(64)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return None
            self.lost(kill=isinstance(exc, socket.timeout))
            raise Gone(errtext(exc)) from None
        if len(answer) != NUMBER.size:
            self.lost()
            raise Gone("it exited")
        kind, found = NUMBER.unpack(answer)
        number = int(found)
        if kind == PID:
            self.running[number] = self.running.get(number, 0) + 1
            return number
        raise OSError(number, os.strerror(number))

    def reload(self) -> None:
        """SIGHUP: the relay server builds its contexts again (it keeps
        the old ones on failure; the server has said why already)."""
        if not self.alive:
            return
        try:
            self.ctl.send(RELOAD)
        except OSError:
            self.lost()

    def reaped(self) -> List[Tuple[int, int]]:
        """The relays that ended since last asked, ``(pid, wait
        status)``; once the relay server and its relays are all gone,
        the ones it never reported, with status 111."""
        ended: List[Tuple[int, int]] = []
        while self.exits is not None:
            try:
                data = os.read(self.exits, EXIT.size * 512)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                os.close(self.exits)
                self.exits = None
                self.lost()
                ended.extend((pid, EXIT_TEMP << 8) for pid, count in sorted(self.running.items())
                             for _ in range(count))
                self.running.clear()
                break
            for pid, status in EXIT.iter_unpack(data):
                left = self.running.pop(pid, 0) - 1
                if left > 0:
                    self.running[pid] = left
                ended.append((pid, status))
        return ended

    def lost(self, kill: bool = False) -> None:
        """Stop using the relay server; ``kill``: it hangs (not dead,
        so its pid is still its own), end it."""
        if not self.alive:
            return
        self.alive = False
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
        self.ctl.close()
