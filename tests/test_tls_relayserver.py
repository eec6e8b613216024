"""The TLS relay server (``ucspi/tls/relayserver.py``): a TLS server
whose program is spawned forks its relays from a small ``python -S``
process of its own, and falls back to forking them itself when that
process cannot serve.

The end-to-end tests here are about the relay server itself (who forks
the relays, what happens when it dies, when the server goes, when the
environment is too large to hand over); every other TLS test runs
through it too.  The protocol tests drive the server's handle on it
(:class:`RelayServer`) against a socket pair and a pipe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Iterator, Optional, Tuple

import pytest

from tests.fix_server import (Server, Servers, alive, children_of, direct_children, is_relay_server,
                              read_exactly, relay_server_of)
from tests.fix_tls import (NOLOOKUP, Certs, end_status, no_traceback, read_tls, start_tls,
                           tls_connect, tls_env)
from tests.util import PYTHON, ROOT, wait_until
from ucspi.tls.relayserver import ERROR, PID, Gone, RelayServer

_NUMBER = struct.Struct("=ci")
_EXIT = struct.Struct("=ii")


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read().decode("latin-1")
    return int(stat[stat.rfind(")") + 2:].split()[1])


def _flags_of(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read()


def _echo(server: Server) -> None:
    with tls_connect(server) as sock:
        sock.sendall(b"ping\n")
        assert read_exactly(sock, 5) == b"ping\n"


# -- end to end ---------------------------------------------------------------------------
def test_relays_are_forked_by_the_relay_server(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, prog=["sh", "-c", "echo $PPID; cat"])
    relays = relay_server_of(server.pid)
    assert relays is not None, direct_children(server.pid)
    assert b"\0-S\0" in _flags_of(relays)        # no site packages, no at-fork hooks
    with tls_connect(server) as sock:
        line = b""
        while not line.endswith(b"\n"):
            line += read_exactly(sock, 1)
        relay = int(line)                        # the program's parent
        assert _parent_of(relay) == relays
        pid = server.wait_pids(1)[0]
        assert pid == relay                      # the pid line names the relay
        sock.sendall(b"ping\n")
        assert read_exactly(sock, 5) == b"ping\n"
    assert end_status(server, relay) == 0
    assert wait_until(lambda: not children_of(server.pid))
    assert relay_server_of(server.pid) == relays  # it stays for the next client
    no_traceback(server)


def _relay_pid(server: Server) -> int:
    """The relay process of one connection to a ``echo $PPID`` server."""
    with tls_connect(server) as sock:
        return int(read_tls(sock))


def test_a_relay_process_serves_one_connection_after_another(
        servers: Servers, certs: Certs) -> None:
    """One client after another: the same relay process serves them all
    (no fork each), each has its pid and end lines, and -c 1's slot
    comes back each time."""
    server = start_tls(servers, certs, options=["-c", "1"], prog=["sh", "-c", "echo $PPID"])
    relays = [_relay_pid(server) for _ in range(4)]
    assert len(set(relays)) == 1, relays
    assert server.wait_pids(4) == relays
    server.wait_log(rf"^tcpserver: end {relays[0]} status 0$", 4)
    assert _parent_of(relays[0]) == relay_server_of(server.pid)
    no_traceback(server)


def test_sighup_retires_relay_processes(servers: Servers, certs: Certs) -> None:
    """The relay processes hold the contexts they were forked with: after
    SIGHUP the idle ones leave and the next client gets a new one."""
    server = start_tls(servers, certs, prog=["sh", "-c", "echo $PPID"])
    before = _relay_pid(server)
    server.wait_log(rf"^tcpserver: end {before} status 0$")
    server.marker()                                  # SIGHUP, and its line
    assert wait_until(lambda: not alive(before))
    after = _relay_pid(server)
    assert after != before and _parent_of(after) == relay_server_of(server.pid)


def test_a_dead_idle_relay_process_is_replaced(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, prog=["sh", "-c", "echo $PPID"])
    first = _relay_pid(server)
    server.wait_log(rf"^tcpserver: end {first} status 0$")
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: not alive(first))
    second = _relay_pid(server)
    assert second != first
    assert "warning" not in server.log()
    assert server.lines().count(f"tcpserver: end {first} status 0") == 1   # no second end


def test_a_relay_process_killed_while_serving(servers: Servers, certs: Certs) -> None:
    """SIGKILL of a busy relay process: its connection ends (the end line
    says SIGKILL), and the next client is served."""
    server = start_tls(servers, certs, prog=["cat"])
    with _held(server) as (held, relay):
        os.kill(relay, signal.SIGKILL)
        assert end_status(server, relay) == signal.SIGKILL
        assert read_tls(held) == b""
    _echo(server)
    assert server.wait_pids(2)[1] != relay
    no_traceback(server)


def test_idle_relay_processes_leave(servers: Servers, certs: Certs) -> None:
    """An idle relay process unused for 10 seconds exits (its memory goes
    back); the relay server stays."""
    server = start_tls(servers, certs, prog=["sh", "-c", "echo $PPID"])
    relay = _relay_pid(server)
    assert wait_until(lambda: not alive(relay), 20)
    assert relay_server_of(server.pid) is not None
    assert _relay_pid(server) != relay


def test_end_status_and_slots_come_back_through_it(servers: Servers, certs: Certs) -> None:
    """-c 1: each connection's slot is free again when its relay has been
    reaped by the relay server (else the second client would wait)."""
    server = start_tls(servers, certs, options=["-c", "1"], prog=["sh", "-c", "exit 7"])
    for _ in range(3):
        with tls_connect(server) as sock:
            assert read_tls(sock) == b""
    pids = server.wait_pids(3)
    assert [end_status(server, pid) for pid in pids] == [7 << 8] * 3
    server.wait_log(r"^tcpserver: status: 0/1$", 4)


def test_server_goes_on_when_the_relay_server_dies(servers: Servers, certs: Certs) -> None:
    """SIGKILL the relay server with a relay running: one warning, the
    running relay is ended with 111 (its exit cannot be known any
    more), and the next clients get relays forked by the server."""
    server = start_tls(servers, certs, prog=["cat"])
    relays = relay_server_of(server.pid)
    assert relays is not None
    with _held(server) as (held, first):
        os.kill(relays, signal.SIGKILL)
        assert wait_until(lambda: not alive(relays))
        # relay processes do not hold the exit pipe: the server sees its
        # end as soon as the relay server is gone
        assert end_status(server, first) == 111 << 8
        server.wait_log(r"^tcpserver: warning: TLS relay server: .*; relays are forked "
                        r"by the server$")
        for _ in range(2):
            _echo(server)
        held.sendall(b"two\n")                 # the orphan relays on
        assert read_exactly(held, 4) == b"two\n"
    second, third = server.wait_pids(3)[1:]
    assert _parent_of_or_none(second) in (server.pid, None)
    assert end_status(server, second) == 0 and end_status(server, third) == 0
    assert len([ln for ln in server.lines() if "TLS relay server" in ln]) == 1
    no_traceback(server)


@contextlib.contextmanager
def _held(server: Server) -> Iterator[Tuple[ssl.SSLSocket, int]]:
    """The server's first client, held open through ``cat`` after one
    line went both ways; its relay's pid."""
    with tls_connect(server) as held:
        held.sendall(b"one\n")
        assert read_exactly(held, 4) == b"one\n"
        server.remember()
        yield held, server.wait_pids(1)[0]


def _parent_of_or_none(pid: int) -> Optional[int]:
    try:
        return _parent_of(pid)
    except OSError:
        return None


def test_relay_server_outlives_the_server_until_its_relays_end(
        servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, prog=["cat"])
    relays = relay_server_of(server.pid)
    assert relays is not None
    with _held(server) as (held, _):
        assert server.stop() == 0
        held.sendall(b"two\n")                 # the relay serves on (djb)
        assert read_exactly(held, 4) == b"two\n"
        assert alive(relays)
    assert wait_until(lambda: not alive(relays)), "the relay server did not leave"


def test_huge_environment_is_relayed_by_the_server(servers: Servers, certs: Certs) -> None:
    """An environment too large for one message (over 256 KiB): that
    connection's relay is forked by the server itself, and it works."""
    big = {f"BIG{n}": "x" * (100 * 1024) for n in range(3)}   # one may not pass 128 KiB
    server = start_tls(servers, certs, prog=["sh", "-c", 'echo "$PPID ${#BIG0} ${#BIG2}"'],
                       env=tls_env(**big))
    with tls_connect(server) as sock:
        ppid, size0, size2 = read_tls(sock).split()
    assert int(size0) == int(size2) == 100 * 1024
    assert _parent_of_or_none(int(ppid)) in (server.pid, None)
    assert int(ppid) == server.wait_pids(1)[0]
    assert relay_server_of(server.pid) is not None


def test_relay_server_reads_certificates_before_the_drop(
        servers: Servers, certs: Certs, tmp_path: Path) -> None:
    """As root with -u: a certificate file only root may read is loaded by
    the relay server before it drops privileges, as the server's is;
    then it runs as the target user."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    private = tmp_path / "root-only.pem"
    shutil.copyfile(certs.default, private)
    os.chmod(private, 0o400)
    server = start_tls(servers, certs, options=["-u", "65534", "-g", "65534"], prog=["id", "-u"],
                       tls=["-n", str(private)])
    with tls_connect(server) as sock:
        assert read_tls(sock).strip() == b"65534"
    relays = relay_server_of(server.pid)
    assert relays is not None
    with open(f"/proc/{relays}/status") as handle:
        ids = {line.split()[0]: set(line.split()[1:]) for line in handle
               if line.startswith(("Uid:", "Gid:"))}
    assert ids == {"Uid:": {"65534"}, "Gid:": {"65534"}}
    assert "TLS relay server" not in server.log()


def _relay_server_serves(server: Server) -> str:
    """One echo through TLS; the relay server's command line."""
    relays = relay_server_of(server.pid)
    assert relays is not None, (direct_children(server.pid), server.log())
    _echo(server)
    return _flags_of(relays).decode(errors="replace")


def test_relay_server_from_a_zipapp(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    out = tmp_path / "tcpserver.pyz"
    built = subprocess.run([PYTHON, os.path.join(ROOT, "tools", "build_pyz.py"), "-o", str(out)],
                           capture_output=True, timeout=60)
    assert built.returncode == 0, built.stderr
    server = servers(["-v", *NOLOOKUP, "-i", certs.certdir, "-s"], prog=["cat"],
                     env=tls_env(), impl=str(out))
    argv = _relay_server_serves(server).split("\0")
    assert argv[4:6] == [str(out), "ucspi"], argv


def test_relay_server_of_a_vendored_copy(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    """``ucspi/`` copied as ``myproj/_vendor/ucspi``: the relay server
    imports that copy, not a ``ucspi`` on the path."""
    vendor = tmp_path / "myproj" / "_vendor"
    vendor.mkdir(parents=True)
    for pkg in (tmp_path / "myproj", vendor):
        (pkg / "__init__.py").write_text("")
    shutil.copytree(os.path.join(ROOT, "ucspi"), vendor / "ucspi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "serve.py"
    script.write_text("import sys\nsys.path.insert(0, %r)\n"
                      "from myproj._vendor.ucspi.server import main\n"
                      "sys.exit(main())\n" % str(tmp_path))
    server = servers(["-v", *NOLOOKUP, "-i", certs.certdir, "-s"], prog=["cat"],
                     env=tls_env(), impl=str(script))
    argv = _relay_server_serves(server).split("\0")
    assert argv[4:6] == [str(tmp_path), "myproj._vendor.ucspi"], argv
    assert "TLS relay server" not in server.log()


def test_relay_server_puts_the_library_first(servers: Servers, certs: Certs,
                                             tmp_path: Path) -> None:
    """The package's folder may be a site-packages with old backports
    named like the standard library's modules: the relay server looks
    in the library first (here a ``typing.py`` that fails beside the
    package)."""
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "ucspi"), site / "ucspi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (site / "typing.py").write_text("raise ImportError('an old backport')\n")
    script = tmp_path / "serve.py"
    script.write_text("import sys, typing\nsys.path.insert(0, %r)\n"
                      "from ucspi.server import main\nsys.exit(main())\n" % str(site))
    server = servers(["-v", *NOLOOKUP, "-i", certs.certdir, "-s"], prog=["cat"],
                     env=tls_env(), impl=str(script))
    _relay_server_serves(server)
    assert "TLS relay server" not in server.log()


def test_relay_server_that_cannot_import_says_why(servers: Servers, certs: Certs,
                                                  tmp_path: Path) -> None:
    """A copy of the package with a broken module: one warning with the
    reason, no traceback, and the server forks its relays itself."""
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "ucspi"), site / "ucspi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (site / "ucspi" / "server" / "relays.py").write_text("raise ImportError('broken copy')\n")
    script = tmp_path / "serve.py"
    script.write_text("import sys\nsys.path.insert(0, %r)\n"
                      "from ucspi.server import main\nsys.exit(main())\n" % str(site))
    server = servers(["-v", *NOLOOKUP, "-i", certs.certdir, "-s"], prog=["cat"],
                     env=tls_env(), impl=str(script))
    server.wait_log(r"^tcpserver: warning: TLS relay server: unable to import ucspi: "
                    r"ImportError: broken copy; relays are forked by the server$")
    _echo(server)
    assert relay_server_of(server.pid) is None
    no_traceback(server)


# -- the protocol, the server's side --------------------------------------------------------
@pytest.fixture
def handle() -> Iterator[Tuple[RelayServer, socket.socket, int]]:
    """A :class:`RelayServer` whose other ends are here: the control
    socket's peer and the exit pipe's write end (pid: a number that is
    never signalled, the handle is never told to kill)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    exit_r, exit_w = os.pipe()
    os.set_blocking(exit_r, False)
    relay = RelayServer(-1, ours, exit_r)
    ours.settimeout(5)
    yield relay, theirs, exit_w
    theirs.close()
    for fd in (exit_w, relay.exits):
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    if relay.alive:
        relay.ctl.close()


def test_start_hands_over_descriptor_and_environment(handle: Tuple[RelayServer, socket.socket, int]
                                                     ) -> None:
    relay, peer, _ = handle
    a, b = socket.socketpair()
    peer.send(_NUMBER.pack(PID, 4242))           # the answer waits in the queue
    assert relay.start(a.fileno(), {b"A": b"1", b"TCPREMOTEIP": b"127.0.0.1"}, 3, 40) == 4242
    data, fds, _, _ = socket.recv_fds(peer, 1 << 16, 2)
    assert data[:1] == b"C" and struct.unpack_from("=II", data, 1) == (3, 40)
    assert data[9:].split(b"\0") == [b"A=1", b"TCPREMOTEIP=127.0.0.1"]
    assert len(fds) == 1
    os.write(fds[0], b"through")                 # the same connection
    assert b.recv(16) == b"through"
    for sock in (a, b):
        sock.close()
    os.close(fds[0])
    assert relay.running == {4242: 1}


def test_fork_failure_is_an_oserror(handle: Tuple[RelayServer, socket.socket, int]) -> None:
    relay, peer, _ = handle
    peer.send(_NUMBER.pack(ERROR, errno.EAGAIN))
    with pytest.raises(OSError) as caught:
        relay.start(0, {}, 0, 40)
    assert caught.value.errno == errno.EAGAIN
    assert relay.alive


def test_no_answer_is_gone(handle: Tuple[RelayServer, socket.socket, int]) -> None:
    relay, peer, _ = handle
    peer.close()
    with pytest.raises(Gone):
        relay.start(0, {}, 0, 40)
    assert not relay.alive
    with pytest.raises(Gone):
        relay.start(0, {}, 0, 40)


def test_too_large_environment_is_refused_here(handle: Tuple[RelayServer, socket.socket, int]
                                               ) -> None:
    relay, peer, _ = handle
    assert relay.start(0, {b"BIG": b"y" * (300 * 1024)}, 0, 40) is None
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(16)                            # nothing was sent
    assert relay.alive


def test_ready_and_failure_texts(handle: Tuple[RelayServer, socket.socket, int]) -> None:
    relay, peer, _ = handle
    peer.send(b"Xunable to set uid: permission denied")
    with pytest.raises(Gone, match="^unable to set uid: permission denied$"):
        relay.wait_ready(5)
    assert not relay.alive


def test_ready(handle: Tuple[RelayServer, socket.socket, int]) -> None:
    relay, peer, _ = handle
    peer.send(b"R")
    relay.wait_ready(5)
    assert relay.alive


def test_reaped_records_then_the_unreported_at_the_end(
        handle: Tuple[RelayServer, socket.socket, int]) -> None:
    relay, peer, exit_w = handle
    relay.running.update({10: 1, 11: 1, 12: 1})
    assert relay.reaped() == []
    os.write(exit_w, _EXIT.pack(10, 0) + _EXIT.pack(11, 3 << 8))
    assert relay.reaped() == [(10, 0), (11, 3 << 8)]
    assert relay.running == {12: 1}
    os.close(exit_w)
    assert relay.reaped() == [(12, 111 << 8)]
    assert relay.exits is None and not relay.alive
    assert relay.reaped() == []


def test_relay_server_cmdline_is_recognised() -> None:
    assert not is_relay_server(os.getpid())
