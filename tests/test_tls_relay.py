"""The TLS relay: data both ways, half-closes, timeouts (-S, -T),
handshake failures, clients and programs that go away, exit statuses,
and no leaked child or descriptor (IndiMail's relay as amended
by design: tls-relay: the relay waits for the program, exits with its status,
and propagates half-closes both ways).

After every failure the server must serve the next client.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import List, Optional

import pytest

from tests.fix_load import client_pool
from tests.fix_server import Server, Servers, children_of, fd_count, read_all, read_exactly
from tests.fix_tls import (DROPPED, END_DROPPED, MARK_ENV, Certs, TlsClient, client_context,
                           client_hello, end_status, exchange, no_traceback, read_tls, s_client,
                           session_certs, start_tls, tls_connect, tls_env_of)
from tests.util import need, wait_until

MIB = 1024 * 1024
#: answers after the client's end of data
DRAIN_DONE = ["sh", "-c", "cat >/dev/null; echo done"]



def _client(server: Server, version: Optional[str] = None,
            timeout: float = 10.0) -> TlsClient:
    """A handshaken :class:`TlsClient` (TLS ``version`` only, if given)."""
    ctx = client_context(version, version)
    return TlsClient(server.connect(timeout=timeout), ctx, timeout=timeout).handshake()


def _echo_ok(server: Server) -> None:
    """The next client of a ``cat`` server is served."""
    with tls_connect(server) as sock:
        sock.sendall(b"ping\n")
        assert read_exactly(sock, 5) == b"ping\n"


def _no_children(server: Server) -> None:
    """Every relay child has been reaped (no zombie is left)."""
    assert wait_until(lambda: not children_of(server.pid)), children_of(server.pid)


# -- echo and bulk ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_echo_python_client(servers: Servers, certs: Certs, version: str) -> None:
    server = start_tls(servers, certs, prog=["cat"])
    client = _client(server, version)
    try:
        assert client.version() == f"TLSv{version}"
        for line in (b"hello\n", b"again\n", b"x" * 5000):
            client.send(line)
            assert client.read_exactly(len(line)) == line
        client.send_close_notify()
        assert client.read_until_end() == b""
        assert client.close_notify, "the server's side ended without close_notify"
    finally:
        client.close()
    assert end_status(server, server.wait_pids(1)[0]) == 0
    _no_children(server)
    no_traceback(server)


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_echo_s_client(servers: Servers, certs: Certs, flag: str) -> None:
    server = start_tls(servers, certs, prog=["sh", "-c", 'read x; echo "got $x"; read y; '
                                                           'echo "and $y"'])
    result = s_client(server.port, ["-quiet", "-noservername", flag], b"one\ntwo\n",
                      keep_open=True)
    assert result.stdout == b"got one\nand two\n", result
    assert end_status(server, server.wait_pids(1)[0]) == 0



def _dropped_and_serving(server: Server, children: bool = True) -> None:
    """The failed handshake was logged, its program never ran, the server
    serves the next client, and nothing is left behind."""
    server.wait_log(DROPPED)
    assert "PROGRAM-RAN" not in server.log()
    assert tls_env_of(server)["PROTO"] == "TCP"
    if children:
        _no_children(server)
    no_traceback(server)

def test_data_right_behind_client_finished(servers: Servers, certs: Certs) -> None:
    """TLS 1.3 lets the client send data with its Finished, in one TCP
    segment: the data must reach the program at once (it must not wait
    in the TLS layer until the socket is readable again)."""
    server = start_tls(servers, certs, prog=["sh", "-c", 'read x; echo "got $x"'])
    client = TlsClient(server.connect(timeout=5), client_context("1.3", "1.3"), timeout=5)
    try:
        client.handshake_with_data(b"hello\n")
        assert client.read_until_end() == b"got hello\n", server.log()
    finally:
        client.close()
    assert end_status(server, server.wait_pids(1)[0]) == 0


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_bulk_both_ways(servers: Servers, certs: Certs, version: str) -> None:
    server = start_tls(servers, certs, prog=["cat"])
    data = os.urandom(4 * MIB)
    client = _client(server, version, timeout=30)
    try:
        assert exchange(client, data, len(data)) == data
        client.send_close_notify()
        assert client.read_until_end() == b""
    finally:
        client.close()
    assert end_status(server, server.wait_pids(1)[0]) == 0
    no_traceback(server)


def test_bulk_s_client(servers: Servers, certs: Certs) -> None:
    size = 3 * MIB
    data = os.urandom(size)
    server = start_tls(servers, certs,
                       prog=["sh", "-c", f"head -c {size} | sha256sum; head -c {size} /dev/zero"])
    result = s_client(server.port, ["-quiet", "-noservername"], data, timeout=60,
                      keep_open=True)
    digest = hashlib.sha256(data).hexdigest().encode()
    assert result.stdout[:len(digest) + 4] == digest + b"  -\n", result.stdout[:200]
    assert result.stdout[len(digest) + 4:] == b"\0" * size
    assert end_status(server, server.wait_pids(1)[0]) == 0


# -- half-closes ----------------------------------------------------------------------------
@pytest.mark.parametrize("how,version", [("close_notify", "1.3"), ("close_notify", "1.2"),
                                         ("tcp_eof", "1.3"), ("tcp_eof", "1.2")])
def test_client_ends_first_answer_still_arrives(servers: Servers, certs: Certs, how: str,
                                                version: str) -> None:
    """The client's end of data (close_notify, or a bare TCP FIN) is EOF
    on the program's fd 0, and what it writes then still arrives."""
    server = start_tls(servers, certs, prog=DRAIN_DONE)
    client = _client(server, version)
    try:
        client.send(b"x" * 100000)
        if how == "close_notify":
            client.send_close_notify()
        else:
            client.sock.shutdown(socket.SHUT_WR)
        assert client.read_until_end() == b"done\n"
        assert client.close_notify, "no close_notify after the answer"
    finally:
        client.close()
    assert end_status(server, server.wait_pids(1)[0]) == 0
    no_traceback(server)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_program_ends_output_first_input_still_flows(servers: Servers, certs: Certs, tmp_path: Path,
                                                     version: str) -> None:
    """The program closes fd 1: the client gets close_notify, and what it
    sends afterwards still reaches the program's fd 0."""
    out = tmp_path / "got"
    server = start_tls(servers, certs, prog=["sh", "-c", f"echo bye; exec >&-; cat > {out}"])
    client = _client(server, version)
    try:
        assert client.read_until_end() == b"bye\n"
        assert client.close_notify, "the program's end was not sent as close_notify"
        client.send(b"later\n")
        client.send(b"and more\n")
        client.send_close_notify()
        status = end_status(server, server.wait_pids(1)[0])
    finally:
        client.close()
    assert status == 0
    assert out.read_bytes() == b"later\nand more\n"
    no_traceback(server)


# -- exit statuses and programs that end early ---------------------------------------------------
@pytest.mark.parametrize("script,status", [("exit 3", 3 << 8), ("exit 0", 0),
                                           ("kill -TERM $$", 15)])
def test_end_line_has_program_status(servers: Servers, certs: Certs, script: str,
                                     status: int) -> None:
    server = start_tls(servers, certs, prog=["sh", "-c", script])
    with tls_connect(server) as sock:
        assert read_tls(sock) == b""
    assert end_status(server, server.wait_pids(1)[0]) == status
    _no_children(server)
    no_traceback(server)


def test_program_exits_early(servers: Servers, certs: Certs) -> None:
    """The program reads 10 bytes, answers and exits while the client is
    still sending: the answer arrives, the client's later data is
    dropped, the end line shows the program's status."""
    server = start_tls(servers, certs, prog=["sh", "-c", "head -c 10 >/dev/null; echo ok"])
    client = _client(server)
    try:
        client.send(b"0123456789")
        assert client.read_until_end() == b"ok\n"
        try:
            client.send(b"y" * 200000)
            client.send_close_notify()
        except OSError:
            pass                         # the relay may already have closed the socket
    finally:
        client.close()
    assert end_status(server, server.wait_pids(1)[0]) == 0
    _echo_ok_env(server)
    _no_children(server)
    no_traceback(server)


def _echo_ok_env(server: Server) -> None:
    """The next client is served (whatever the program prints)."""
    with tls_connect(server) as sock:
        sock.sendall(b"0123456789")
        assert read_tls(sock) == b"ok\n"


# -- timeouts -----------------------------------------------------------------------------------
def _timeout_lines(server: Server) -> None:
    lines = [line for line in server.lines() if not line.startswith("tcpserver: status:")]
    at = lines.index("SSL_accept: decoded err: unprocessed data availabe for read")
    assert "SSL_accept: system err" not in "\n".join(lines)
    assert lines[at + 1:at + 2] == [
        "tcpserver: warning: dropping connection, unable to accept SSL connection"], lines
    assert "PROGRAM-RAN" not in server.log()


def test_handshake_timeout_without_hello(servers: Servers, certs: Certs) -> None:
    """A client that never sends its ClientHello costs no process and no
    slot: the loop drops it at -S with the relay's lines."""
    server = start_tls(servers, certs, ["-S", "1"], prog=MARK_ENV)
    silent = server.connect()
    try:
        silent.sendall(client_hello()[:20])          # half a record, then nothing
        try:
            assert read_all(silent, 5) == b""
        except ConnectionResetError:
            pass                                     # closed with its bytes unread
    finally:
        silent.close()
    _timeout_lines(server)
    assert not re.search(r"^tcpserver: (pid|end) ", server.log(), re.M)
    server.wait_log(r"^tcpserver: status: 0/40$")
    assert "status: 1/40" not in server.log()
    assert tls_env_of(server)["PROTO"] == "TCP"
    _no_children(server)
    no_traceback(server)


def test_handshake_timeout_after_hello(servers: Servers, certs: Certs) -> None:
    """A client that stops after its ClientHello: its relay child gives
    up at -S and ends as a dropped connection."""
    server = start_tls(servers, certs, ["-S", "1"], prog=MARK_ENV)
    stalled = server.connect()
    try:
        stalled.sendall(client_hello())
        pid = server.wait_pids(1)[0]
        assert end_status(server, pid) == END_DROPPED
        read_all(stalled, 5)
    finally:
        stalled.close()
    _timeout_lines(server)
    assert tls_env_of(server)["PROTO"] == "TCP"
    _no_children(server)
    no_traceback(server)


def test_idle_timeout(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, ["-T", "1"], prog=["cat"])
    client = _client(server)
    try:
        client.send(b"once\n")
        assert client.read_exactly(5) == b"once\n"
        pid = server.wait_pids(1)[0]
        # then nothing either way: the relay gives up
        server.wait_log(r"^timeout reached without output from child$")
        assert client.read_until_end() == b""
    finally:
        client.close()
    lines = [line for line in server.lines() if not line.startswith("tcpserver: status:")]
    at = lines.index("timeout reached without input from network")
    assert lines[at + 1] == "timeout reached without output from child"
    assert end_status(server, pid) == 0
    _echo_ok(server)
    no_traceback(server)


def test_idle_timeout_reset_by_traffic(servers: Servers, certs: Certs) -> None:
    """-T is an idle timeout: a client that talks every 0.4 s for 2.4 s
    under -T 2 is not cut off (each pause leaves 1.6 s to spare, for a
    loaded machine)."""
    server = start_tls(servers, certs, ["-T", "2"], prog=["cat"])
    client = _client(server)
    try:
        start = time.monotonic()
        for _ in range(6):
            client.send(b"tick\n")
            assert client.read_exactly(5) == b"tick\n"
            time.sleep(0.4)                 # the traffic pattern under test, not a wait
        assert time.monotonic() - start > 2     # longer than -T in all
        client.send(b"tock\n")
        assert client.read_exactly(5) == b"tock\n"
        assert "timeout reached" not in server.log()
    finally:
        client.close()


# -- handshake failures -----------------------------------------------------------------------
def _dropped(server) -> List[str]:  # type: ignore[no-untyped-def]
    """The failed handshake's lines (between ``pid`` and the warning)."""
    pid = server.wait_pids(1)[0]
    assert end_status(server, pid) == END_DROPPED
    lines = server.lines()
    return [line for line in lines if line.startswith("SSL_accept: ")]


def test_garbage_instead_of_client_hello(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, prog=MARK_ENV)
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            read_all(sock, 10)
        except ConnectionResetError:
            pass
    lines = _dropped(server)
    assert "SSL_accept: decoded err: non-recoverable, fatal protocol error" in lines, lines
    assert any(line.startswith("SSL_accept: TLS/SSL err: error:") for line in lines), lines
    _dropped_and_serving(server)


def test_client_gone_during_handshake(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, prog=MARK_ENV)
    hello = client_hello()
    with server.connect() as sock:
        sock.sendall(hello[:len(hello) // 2])
    lines = _dropped(server)
    assert any(line.startswith("SSL_accept: decoded err: non-recoverable, fatal ")
               for line in lines), lines
    _dropped_and_serving(server)


def test_client_reset_during_handshake(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, prog=MARK_ENV)
    sock = server.connect()
    sock.sendall(client_hello())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()                                             # RST
    _dropped(server)
    _dropped_and_serving(server, children=False)


def test_client_vanishes_mid_transfer(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, prog=["cat"])
    client = _client(server)
    pid = server.wait_pids(1)[0]
    client.sock.setblocking(False)
    try:
        for _ in range(64):                  # up to 4 MiB, not read back
            client.obj.write(b"z" * 65536)
            try:
                client.sock.send(client.outgoing.read())
            except BlockingIOError:
                break
    finally:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()                                       # RST
    end_status(server, pid)                  # the relay ended (cat got EOF or EPIPE)
    _echo_ok(server)
    _no_children(server)
    no_traceback(server)


# -- many connections -----------------------------------------------------------------------
@pytest.mark.slow
def test_many_connections_no_zombies_no_fd_growth(servers: Servers, certs: Certs) -> None:
    total, threads = 1000, 4
    server = start_tls(servers, certs, ["-C", "0"], prog=["echo", "x"])
    with tls_connect(server) as sock:
        assert read_tls(sock) == b"x\n"
    _no_children(server)
    before = fd_count(server.pid)

    def client(_: int) -> bytes:
        try:
            with tls_connect(server) as sock:
                return read_tls(sock)
        except (OSError, ssl.SSLError) as exc:
            return repr(exc).encode()

    results = client_pool(client, total, threads)
    assert results == [b"x\n"] * total, (sorted(set(results)), server.log()[-2000:])
    _no_children(server)
    assert fd_count(server.pid) == before
    log = server.log()
    assert "warning" not in log and "SSL_accept" not in log, log[-2000:]
    no_traceback(server)


# -- limits and verbosity ------------------------------------------------------------------------
def test_concurrency_limit_counts_tls_programs(servers: Servers, certs: Certs) -> None:
    """-c counts relay children, and a relay child lives as long as its
    program (design: tls-relay): with -c 1 a second client waits in the backlog until
    the first session ends, then it is served."""
    server = start_tls(servers, certs, ["-c", "1"], prog=["cat"])
    first = _client(server)
    try:
        first.send(b"one\n")
        assert first.read_exactly(4) == b"one\n"
        waiting = server.connect()
        try:
            assert wait_until(lambda: server.queued() == 1), server.queued()
            assert server.marker() == "tcpserver: sighup: 1/1"
            assert server.queued() == 1
            first.send_close_notify()
            assert first.read_until_end() == b""
            second = TlsClient(waiting, client_context()).handshake()
            second.send(b"two\n")
            assert second.read_exactly(4) == b"two\n"
            second.send_close_notify()
            assert second.read_until_end() == b""
        finally:
            waiting.close()
    finally:
        first.close()
    no_traceback(server)


def test_quiet_handshake_failure_logs_nothing(servers: Servers, certs: Certs) -> None:
    server = servers(["-q", "-H", "-R", "-l", "Local", "-i", certs.certdir, "-s"],
                     prog=MARK_ENV)
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            read_all(sock, 10)
        except ConnectionResetError:
            pass
    _no_children(server)
    assert server.log() == ""


def test_renegotiation_option_accepted(servers: Servers, certs: Certs) -> None:
    """-N (OpenSSL 3) is accepted; a TLS 1.2 session works with it."""
    if ssl.OPENSSL_VERSION_INFO < (3,):
        pytest.skip("-N needs OpenSSL 3")
    server = start_tls(servers, certs, ["-N"])
    assert tls_env_of(server, maximum="1.2")["SSL_PROTOCOL"] == "TLSv1.2"
