"""Side-by-side TLS benchmark: our tcpserver (``-n CERT``) against stunnel4
in exec mode, same certificate, same programs, loopback only.

    python3 bench/bench_tls.py [--rounds 3] [--count 2000] [--concurrency 32]
                               [--clients 2] [--mib 100] [--sessions 200] [--quick]
                               [--scenario immediate|starttls|clientcert]

Three measurements; the first two run in interleaved rounds (ours,
stunnel, then stunnel, ours, ...) so that machine noise hits both alike,
and the table shows medians over the rounds:

1. **Handshakes.**  ``--concurrency`` clients at once (closed loop), each
   connects, does a TLS 1.3 handshake (``CERT_NONE``), reads the output
   of ``/bin/echo hello`` to EOF and closes, ``--count`` connections a
   round.  conn/s, p50 and p99 latency (connect to EOF), and server CPU per
   connection (``/proc/PID/stat``: the server's own time plus its reaped
   children's, i.e. ours: the parent and its TLS relay server, and the
   relay processes (live ones too: they serve connection after
   connection) with their programs; stunnel's threads + programs).  The clients are ``--clients`` processes, each a
   non-blocking selector loop (no threads, no GIL contention) with its
   share of the concurrency; each reports its CPU time, and the table
   shows the busiest one's CPU as a share of the round's wall time: well
   below 100 % means the clients were waiting for the server, not the
   other way round.
2. **Relay throughput.**  One client sends ``--mib`` MiB through ``cat``
   and reads it back at the same time (one non-blocking loop that writes
   whenever the socket is writable and reads whenever it is readable: an
   ``SSLSocket`` must not be used from two threads at once, OpenSSL's SSL
   objects are not thread-safe), checking length and CRC of what comes
   back.  MiB/s, and the server's CPU seconds per 100 MiB.
3. **Memory.**  ``--sessions`` idle TLS sessions (handshake done, one
   line echoed by ``cat`` so the program runs), then USS
   (``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``) of
   our relay processes (the relay server's children; the programs are
   their children and are not counted) and of our parent with its relay
   server, against
   stunnel's one process (its exec'd programs not counted), with stunnel's
   growth over its idle USS per session.

``--scenario starttls`` and ``--scenario clientcert`` run the handshake
rounds alone (no relay, no memory) for the second part of TLS:

- **starttls**: ours with ``-w`` and a C program that greets, answers
  EHLO and STARTTLS and asks for TLS through UCSPI-TLS (``y`` on
  ``$SSLCTLFD``), against stunnel's ``protocol = smtp``, which does the
  EHLO and STARTTLS part itself in front of a program that only greets.
  The client is the same for both: greeting, EHLO, STARTTLS, the
  handshake, EHLO over TLS, the answer to EOF.  stunnel waits 200 ms for
  the client to speak first before it greets (its check for a client
  that starts TLS at once), so its rate is bounded by concurrency / 0.2 s:
  compare the CPU per connection as well as the rate.
- **clientcert**: ours with ``-y -a CA`` against stunnel's ``CAfile``,
  ``verifyChain`` and ``requireCert``; every client presents a
  certificate signed by that CA and gets ``echo hello``.

Targets printed beside the results: handshakes ours/stunnel >= 1.0,
throughput ours/stunnel >= 0.8, <= 3 MiB USS per relay child.  Nothing
here is a test: the numbers go in issue notes, not assertions.

Our server runs as ``python3 tcpserver.py -1 -HRl0 -q -C 0 -c LIMIT -b 256
-n CERT 127.0.0.1 0 PROG``; stunnel from a generated config (foreground,
no pid file, no syslog, ``debug = 0``).  Only processes this script
started are stopped, by pid.  If our server cannot start (TLS not there
yet), the stunnel half still runs and ours shows as ``n/a``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import stop  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OURS = [sys.executable, os.path.join(ROOT, "tcpserver.py")]
STUNNEL = "/usr/bin/stunnel4"
TICK = float(os.sysconf("SC_CLK_TCK"))
HOST = "127.0.0.1"
MIB = 1 << 20

Proc = subprocess.Popen[bytes]


# -- certificate, servers ---------------------------------------------------

def make_cert(directory: str) -> Tuple[str, str, str]:
    """A fresh P-256 self-signed certificate: (key, cert, key+cert PEM)."""
    key, cert, both = (os.path.join(directory, n) for n in ("key.pem", "cert.pem", "both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=bench",
                    "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    with open(both, "wb") as out:
        for name in (key, cert):
            with open(name, "rb") as handle:
                out.write(handle.read())
    os.chmod(both, 0o600)
    return key, cert, both


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: Proc, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_ours(cert: str, prog: List[str], limit: int,
               extra: Tuple[str, ...] = ()) -> Tuple[Proc, int]:
    argv = [*OURS, "-1", "-HRl0", "-q", "-C", "0", "-c", str(limit), "-b", "256",
            *extra, "-n", cert, HOST, "0", *prog]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        stop(proc)
        err = proc.stderr.read().decode(errors="replace").strip()
        raise RuntimeError(err.splitlines()[-1] if err else "no port printed")
    proc.stderr.close()   # -q: nothing more expected; never let a full pipe block it
    return proc, int(line)


def start_stunnel(cert: str, prog: List[str], workdir: str,
                  extra: str = "") -> Tuple[Proc, int]:
    port = free_port()
    conf = os.path.join(workdir, f"stunnel-{port}.conf")
    with open(conf, "w") as handle:
        args = " ".join([os.path.basename(prog[0]), *prog[1:]])
        handle.write("foreground = yes\npid =\nsyslog = no\ndebug = 0\n"
                     f"[svc]\naccept = {HOST}:{port}\ncert = {cert}\n"
                     f"exec = {prog[0]}\nexecArgs = {args}\n{extra}")
    proc = subprocess.Popen([STUNNEL, conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
    except RuntimeError:
        stop(proc)
        raise
    return proc, port


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """(utime+stime, cutime+cstime) of ``pid``: its own CPU seconds and its
    reaped children's."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2:].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def children(pid: int) -> List[int]:
    """Direct children of ``pid`` (scan of /proc/*/stat)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if int(data[data.rindex(b")") + 2:].split()[1]) == pid:
            found.append(int(entry))
    return found


def relay_servers(pid: int) -> List[int]:
    """Our server's TLS relay server (``ucspi/server/relays.py``), if any:
    the relays are its children, not the server's."""
    found = []
    for kid in children(pid):
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as handle:
                if b".server.relays" in handle.read():
                    found.append(kid)
        except OSError:
            continue
    return found


def tree_cpu(pid: int) -> Tuple[float, float]:
    """:func:`cpu_seconds` of a server, with its relay server's own time
    counted as the server's, and as its children's the relay processes
    (live ones too: they serve one connection after another) with the
    programs they reaped."""
    own, kids = cpu_seconds(pid)
    for helper in relay_servers(pid):
        try:
            h_own, h_kids = cpu_seconds(helper)
        except OSError:
            continue
        own += h_own
        kids += h_kids
        for relay in children(helper):
            try:
                kids += sum(cpu_seconds(relay))
            except OSError:
                continue
    return own, kids


def uss_kib(pid: int) -> Tuple[int, int]:
    """(USS, PSS) of ``pid`` in KiB, from ``/proc/PID/smaps_rollup``."""
    uss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                uss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return uss, pss


def client_context(client_cert: str = "") -> ssl.SSLContext:
    """TLS 1.3, the server not verified; ``client_cert`` (key and
    certificate in one PEM file) is presented when the server asks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if client_cert:
        ctx.load_cert_chain(client_cert)
    return ctx


# -- the scenarios beside immediate TLS ------------------------------------------

# Delayed TLS: both programs are small C, compiled here.  Ours speaks the
# SMTP greeting and STARTTLS itself and asks for TLS through UCSPI-TLS
# (writes y to $SSLCTLFD, then uses $SSLREADFD/$SSLWRITEFD); stunnel's
# ``protocol = smtp`` does the EHLO and STARTTLS part itself, so its
# program only greets and answers the EHLO sent over TLS.  The client is
# the same for both: greeting, EHLO, STARTTLS, handshake, EHLO, the
# answer to EOF.
STARTTLS_C = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int line(int fd) { char c; while (read(fd, &c, 1) == 1) if (c == '\n') return 0; return -1; }
static void put(int fd, const char *s) { (void)!write(fd, s, strlen(s)); }
int main(void) {
#ifdef UCSPI_TLS
    const char *ctl = getenv("SSLCTLFD"), *rd = getenv("SSLREADFD"), *wr = getenv("SSLWRITEFD");
    if (!ctl || !rd || !wr) return 100;
    put(1, "220 bench ESMTP\r\n");
    if (line(0)) return 1;                  /* EHLO */
    put(1, "250-bench\r\n250 STARTTLS\r\n");
    if (line(0)) return 1;                  /* STARTTLS */
    put(1, "220 ready\r\n");
    put(atoi(ctl), "y");
    if (line(atoi(rd))) return 1;           /* EHLO, over TLS */
    put(atoi(wr), "250 hello\r\n");
#else
    put(1, "220 bench ESMTP\r\n");
    if (line(0)) return 1;                  /* EHLO, over TLS */
    put(1, "250 hello\r\n");
#endif
    return 0;
}
"""


def starttls_programs(directory: str) -> Tuple[str, str]:
    """(ours, stunnel's): the two builds of ``STARTTLS_C``."""
    source = os.path.join(directory, "starttls.c")
    with open(source, "w") as handle:
        handle.write(STARTTLS_C)
    built = []
    for name, flags in (("starttls-ucspi", ["-DUCSPI_TLS"]), ("starttls-plain", [])):
        out = os.path.join(directory, name)
        subprocess.run(["cc", "-O2", *flags, "-o", out, source], check=True, timeout=60)
        built.append(out)
    return built[0], built[1]


def make_client_ca(directory: str) -> Tuple[str, str]:
    """A client CA and a client certificate it signed (P-256): (CA file,
    the client's key and certificate in one PEM file)."""
    ca_key, ca, key, csr, crt, both = (os.path.join(directory, n) for n in (
        "ca-key.pem", "ca.pem", "client-key.pem", "client.csr", "client.pem", "client-both.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    quiet: Dict[str, Any] = {"check": True, "stdout": subprocess.DEVNULL,
                             "stderr": subprocess.DEVNULL, "timeout": 30}
    subprocess.run(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench client CA",
                    "-keyout", ca_key, "-out", ca], **quiet)
    subprocess.run(["openssl", "req", *ec, "-subj", "/CN=bench client", "-keyout", key,
                    "-out", csr], **quiet)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                    "-CAcreateserial", "-days", "2", "-out", crt], **quiet)
    with open(both, "wb") as out:
        for name in (key, crt):
            with open(name, "rb") as handle:
                out.write(handle.read())
    os.chmod(both, 0o600)
    return ca, both


def starttls_step(sock: socket.socket, state: List[Any]) -> Optional[bytes]:
    """Read what the server sent in clear and answer it; returns the
    bytes that came (b"" on EOF), or None when nothing was there yet.
    ``state[3]`` is the dialogue's step: 0 greeting, 1 EHLO's answer, 2
    STARTTLS's answer, 3 done (time for the handshake)."""
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return None
    state[4] += data
    if not data:
        return data
    while b"\n" in state[4]:
        line, _, state[4] = state[4].partition(b"\n")
        if line[3:4] == b"-":          # a continued reply
            continue
        code = line[:3]
        if (state[3], code) == (0, b"220"):
            sock.sendall(b"EHLO bench\r\n")
        elif (state[3], code) == (1, b"250"):
            sock.sendall(b"STARTTLS\r\n")
        elif (state[3], code) == (2, b"220"):
            pass
        else:
            raise OSError(f"unexpected reply {line!r} at step {state[3]}")
        state[3] += 1
    return data


def probe(port: int) -> Tuple[str, str, bytes]:
    """One blocking connection: (protocol, cipher, everything read)."""
    ctx = client_context()
    with ctx.wrap_socket(socket.create_connection((HOST, port), 10)) as sock:
        got = b""
        while True:
            try:
                data = sock.recv(65536)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            if not data:
                break
            got += data
        cipher = sock.cipher()
        return str(sock.version()), cipher[0] if cipher else "?", got


# -- 1. handshakes: client worker processes ------------------------------------

def handshake_worker(port: int, count: int, concurrency: int, start_at: float,
                     seconds: float, mode: str = "tls", client_cert: str = "") -> Dict[str, Any]:
    """Closed loop of TLS connections; runs in its own process.  A
    connection counts if the handshake worked and some output arrived
    before EOF; ``ragged``: EOFs that came without close_notify.  In
    ``mode`` "starttls" each connection starts with the SMTP dialogue in
    clear (:func:`starttls_step`) and sends an EHLO once TLS is up."""
    ctx = client_context(client_cert)
    sel = selectors.DefaultSelector()
    started = done = errors = ragged = 0
    latencies: List[float] = []
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    begin = time.monotonic()
    deadline = begin + seconds

    def launch() -> None:
        nonlocal started, errors
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if mode != "starttls":
            sock = ctx.wrap_socket(sock, do_handshake_on_connect=False,
                                   suppress_ragged_eofs=False)
        sock.setblocking(False)
        err = sock.connect_ex((HOST, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            errors += 1
            return
        started += 1
        # data: [t0, handshaken?, bytes read, STARTTLS step, clear bytes not parsed]
        state = [time.monotonic(), False, 0, 0, b""]
        sel.register(sock, selectors.EVENT_READ if mode == "starttls" else selectors.EVENT_WRITE,
                     state)

    def finish(sock: socket.socket, t0: float, ok: bool) -> None:
        nonlocal done, errors
        sel.unregister(sock)
        sock.close()
        if ok:
            latencies.append(time.monotonic() - t0)
        else:
            errors += 1
        done += 1
        if started < count and time.monotonic() < deadline:
            launch()

    while started < min(concurrency, count):
        launch()
    while done < started and time.monotonic() < deadline + 10:
        for key, _ in sel.select(1.0):
            sock = key.fileobj
            state = key.data
            if not isinstance(sock, ssl.SSLSocket):   # STARTTLS, still in clear
                assert isinstance(sock, socket.socket)
                try:
                    came = starttls_step(sock, state)
                except OSError:
                    finish(sock, state[0], False)
                    continue
                if came == b"":
                    finish(sock, state[0], False)
                    continue
                if came is None or state[3] < 3:
                    continue
                sel.unregister(sock)
                sock = ctx.wrap_socket(sock, do_handshake_on_connect=False,
                                       suppress_ragged_eofs=False)
                sel.register(sock, selectors.EVENT_WRITE, state)
                continue
            if not state[1]:
                try:
                    sock.do_handshake()
                    state[1] = True
                    if mode == "starttls":
                        sock.sendall(b"EHLO bench\r\n")
                except ssl.SSLWantReadError:
                    sel.modify(sock, selectors.EVENT_READ, state)
                    continue
                except ssl.SSLWantWriteError:
                    sel.modify(sock, selectors.EVENT_WRITE, state)
                    continue
                except OSError:
                    finish(sock, state[0], False)
                    continue
                sel.modify(sock, selectors.EVENT_READ, state)
            while True:   # drain: decrypted data may sit in OpenSSL's buffer
                try:
                    data = sock.recv(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    data = b""
                except ssl.SSLEOFError:   # EOF without close_notify
                    ragged += 1
                    data = b""
                except OSError:
                    finish(sock, state[0], False)
                    break
                if not data:   # a connection without the program's output failed
                    finish(sock, state[0], state[2] > 0)
                    break
                state[2] += len(data)
    elapsed = time.monotonic() - begin
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"conns": len(latencies), "errors": errors + (started - done), "ragged": ragged,
            "begin": begin,
            "end": begin + elapsed, "cpu": cpu, "latencies": latencies}


def handshakes(port: int, count: int, concurrency: int, clients: int,
               seconds: float = 60.0, mode: str = "tls",
               client_cert: str = "") -> Dict[str, float]:
    clients = max(1, min(clients, concurrency))
    start_at = time.monotonic() + 0.5   # CLOCK_MONOTONIC is system-wide
    procs = []
    for i in range(clients):
        share_n = count // clients + (1 if i < count % clients else 0)
        share_c = concurrency // clients + (1 if i < concurrency % clients else 0)
        spec = json.dumps([port, share_n, share_c, start_at, seconds, mode, client_cert])
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                       "--worker", spec], stdout=subprocess.PIPE))
    reports = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        reports.append(json.loads(out))
    begin = min(r["begin"] for r in reports)
    end = max(r["end"] for r in reports)
    wall = max(1e-9, end - begin)
    lat = sorted(x for r in reports for x in r["latencies"])
    conns = len(lat)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"rate": conns / wall, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "conns": conns,
            "errors": sum(r["errors"] for r in reports),
            "ragged": sum(r["ragged"] for r in reports),
            "client_us": sum(r["cpu"] for r in reports) / max(1, conns) * 1e6,
            "client_busy": max(r["cpu"] / max(1e-9, r["end"] - r["begin"]) for r in reports)}


# -- 2. relay throughput --------------------------------------------------------

def relay(port: int, mib: int, seconds: float = 120.0) -> Dict[str, float]:
    """Send ``mib`` MiB through the program (``cat``) and read it back, in
    one non-blocking loop; MiB/s from the first byte sent to the last read."""
    total = mib * MIB
    block = bytes(range(256)) * 256   # 64 KiB
    view = memoryview(block)
    want_crc = 0
    for _ in range(total // len(block)):
        want_crc = zlib.crc32(block, want_crc)
    ctx = client_context()
    sock = ctx.wrap_socket(socket.create_connection((HOST, port), 10))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    sent = got = 0
    crc = 0
    begin = time.monotonic()
    deadline = begin + seconds
    try:
        while got < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay: {got} of {total} bytes back after {seconds:.0f} s")
            for _, events in sel.select(1.0):
                if events & selectors.EVENT_WRITE and sent < total:
                    try:
                        sent += sock.send(view[:min(len(block), total - sent)])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
                    if sent >= total:
                        sel.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    while True:
                        try:
                            data = sock.recv(262144)
                        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                            break
                        if not data:
                            raise RuntimeError(f"relay: EOF after {got} of {total} bytes")
                        got += len(data)
                        crc = zlib.crc32(data, crc)
        elapsed = time.monotonic() - begin
    finally:
        sel.close()
        sock.close()
    if crc != want_crc or got != total:
        raise RuntimeError(f"relay: data came back changed ({got} bytes, crc {crc:#x} "
                           f"!= {want_crc:#x})")
    return {"mibs": mib / elapsed, "seconds": elapsed}


# -- 3. memory ------------------------------------------------------------------

def open_sessions(port: int, n: int) -> List[ssl.SSLSocket]:
    """``n`` TLS sessions, each with one line echoed by the program."""
    ctx = client_context()
    socks = []
    try:
        for _ in range(n):
            sock = ctx.wrap_socket(socket.create_connection((HOST, port), 10))
            socks.append(sock)
            sock.sendall(b"x\n")
            got = b""
            while len(got) < 2:
                data = sock.recv(16)
                if not data:
                    raise RuntimeError("memory: session closed early")
                got += data
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def uss_of(pid: int, helpers: List[int]) -> Tuple[int, int]:
    """(USS, PSS) of the server process and its relay server."""
    uss, pss = uss_kib(pid)
    for helper in helpers:
        h_uss, h_pss = uss_kib(helper)
        uss += h_uss
        pss += h_pss
    return uss, pss


def memory(cert: str, sessions: int, workdir: str, ours_ok: bool) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    sides: List[Tuple[str, Any]] = [("stunnel", lambda: start_stunnel(cert, ["/bin/cat"], workdir))]
    if ours_ok:
        sides.insert(0, ("ours", lambda: start_ours(cert, ["/bin/cat"], sessions + 20)))
    for name, starter in sides:
        proc, port = starter()
        try:
            probe_socks = open_sessions(port, 3)   # warm-up (first-connection allocations)
            for sock in probe_socks:
                sock.close()
            time.sleep(0.5)
            helpers = relay_servers(proc.pid)       # counted with the server process
            idle, idle_pss = uss_of(proc.pid, helpers)
            socks = open_sessions(port, sessions)
            try:
                time.sleep(0.5)
                kids = [k for k in children(proc.pid) if k not in helpers]
                kids += [k for h in helpers for k in children(h)]
                kid_uss = []
                kid_pss = 0
                for kid in kids:
                    try:
                        uss, pss = uss_kib(kid)
                    except OSError:
                        continue
                    kid_uss.append(uss)
                    kid_pss += pss
                top, top_pss = uss_of(proc.pid, helpers)
                grandkids = sum(len(children(k)) for k in kids)
            finally:
                for sock in socks:
                    sock.close()
            out[name] = {"idle": idle, "top": top, "kids": len(kid_uss), "grandkids": grandkids,
                         "idle_pss": idle_pss, "top_pss": top_pss, "kids_pss": kid_pss,
                         "kids_uss": sum(kid_uss),
                         "kid_median": statistics.median(kid_uss) if kid_uss else 0,
                         "kid_max": max(kid_uss) if kid_uss else 0}
        finally:
            time.sleep(0.3)
            stop(proc)
    return out


# -- report ------------------------------------------------------------------------

def med(rows: List[Dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if rows_ok(a, b) else "n/a"


def rows_ok(a: float, b: float) -> bool:
    return a == a and b == b and b != 0


def fmt(x: float, spec: str) -> str:
    width = spec.split(".")[0]
    return format(x, spec) if x == x else format("n/a", ">" + width)


def handshake_rounds(servers: Dict[str, Tuple[Proc, int]], args: argparse.Namespace,
                     mode: str = "tls", client_cert: str = "") -> Dict[str, List[Dict[str, float]]]:
    """A warm-up, then ``--rounds`` interleaved handshake rounds against
    each server, with the server's CPU per connection."""
    names = list(servers)
    hs: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    for name in names:   # warm-up, not counted
        handshakes(servers[name][1], min(200, args.count), args.concurrency, args.clients,
                   mode=mode, client_cert=client_cert)
    for number in range(args.rounds):
        for name in (names if number % 2 == 0 else names[::-1]):
            proc, port = servers[name]
            own0, kids0 = tree_cpu(proc.pid)
            res = handshakes(port, args.count, args.concurrency, args.clients,
                             mode=mode, client_cert=client_cert)
            time.sleep(0.3)   # the last relay children / programs are reaped
            own1, kids1 = tree_cpu(proc.pid)
            done = max(1, int(res["conns"]))
            res["own_us"] = (own1 - own0) / done * 1e6
            res["kids_us"] = (kids1 - kids0) / done * 1e6
            res["server_us"] = res["own_us"] + res["kids_us"]
            hs[name].append(res)
            print(f"  round {number + 1} handshakes {name:8} {res['rate']:7.0f} conn/s "
                  f"p99 {res['p99_ms']:6.1f} ms  errors {res['errors']}", flush=True)
    return hs


def paired(ours: List[Dict[str, float]], theirs: List[Dict[str, float]], key: str) -> None:
    """A row: median and range of the per-round ratios (each round ran both)."""
    ratios = sorted(a[key] / b[key] for a, b in zip(ours, theirs) if b[key])
    if ratios:
        print(f"{'  ours/stunnel, median of per-round ratios':66} "
              f"{statistics.median(ratios):6.2f}  rounds {ratios[0]:.2f}..{ratios[-1]:.2f}")


def target(a: float, b: float, floor: float) -> str:
    if not rows_ok(a, b):
        return f"ours/stunnel >= {floor}"
    return f"ours/stunnel >= {floor}  {'MET' if a / b >= floor else 'MISSED'}"


def report_handshakes(o_hs: List[Dict[str, float]], s_hs: List[Dict[str, float]],
                      args: argparse.Namespace, what: str) -> None:
    print(f"{'measure':44} {'ours':>10} {'stunnel':>10} {'ratio':>6}  target")
    rate_o, rate_s = med(o_hs, "rate"), med(s_hs, "rate")
    print(f"{'handshakes conn/s (c=%d, %s)' % (args.concurrency, what):44} "
          f"{fmt(rate_o, '10.0f')} {fmt(rate_s, '10.0f')} {ratio(rate_o, rate_s):>6}  "
          f"{target(rate_o, rate_s, 1.0)}")
    paired(o_hs, s_hs, "rate")
    for key, label in (("p50_ms", "  p50 latency ms"), ("p99_ms", "  p99 latency ms"),
                       ("server_us", "  server CPU µs/conn (incl. programs)"),
                       ("own_us", "    server process (ours: + relay server)"),
                       ("kids_us", "    its children (ours: relay+program)"),
                       ("client_us", "  client CPU µs/conn"),
                       ("errors", "  errors (median)"),
                       ("ragged", "  EOFs without close_notify (median)")):
        a, b = med(o_hs, key), med(s_hs, key)
        print(f"{label:44} {fmt(a, '10.1f')} {fmt(b, '10.1f')} {ratio(a, b):>6}")
    busy_o = max((r["client_busy"] for r in o_hs), default=float("nan"))
    busy_s = max((r["client_busy"] for r in s_hs), default=float("nan"))
    print(f"{'  busiest client process, % CPU of wall':44} {fmt(busy_o * 100, '10.0f')} "
          f"{fmt(busy_s * 100, '10.0f')}         well below 100: not client-limited")
    share_o = med(o_hs, "client_us") / (med(o_hs, "client_us") + med(o_hs, "server_us"))
    share_s = med(s_hs, "client_us") / (med(s_hs, "client_us") + med(s_hs, "server_us"))
    print(f"{'  clients, % of all CPU spent (client+server)':44} {fmt(share_o * 100, '10.0f')} "
          f"{fmt(share_s * 100, '10.0f')}")


def other_scenario(args: argparse.Namespace, workdir: str, cert: str) -> None:
    """``--scenario starttls`` or ``clientcert``: handshake rounds only."""
    servers: Dict[str, Tuple[Proc, int]] = {}
    client_cert = ""
    if args.scenario == "starttls":
        mode, what = "starttls", "STARTTLS"
        ours_prog, stunnel_prog = starttls_programs(workdir)
        ours: Tuple[Tuple[str, ...], List[str]] = (("-w",), [ours_prog])
        theirs: Tuple[str, List[str]] = ("protocol = smtp\n", [stunnel_prog])
    else:
        mode, what = "tls", "client certificate"
        ca, client_cert = make_client_ca(workdir)
        ours = (("-y", "-a", ca), ["/bin/echo", "hello"])
        theirs = (f"CAfile = {ca}\nverifyChain = yes\nrequireCert = yes\n",
                  ["/bin/echo", "hello"])
    try:
        servers["stunnel"] = start_stunnel(cert, theirs[1], workdir, theirs[0])
        servers["ours"] = start_ours(cert, ours[1], 100, ours[0])
        hs = handshake_rounds(servers, args, mode, client_cert)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    print()
    print(f"median of {args.rounds} round(s); load now {os.getloadavg()[0]:.2f}")
    report_handshakes(hs["ours"], hs["stunnel"], args, what)
    if args.scenario == "starttls":
        print("  (stunnel's protocol = smtp waits 200 ms for the client to speak first\n"
              "   before it greets: its rate is bounded by concurrency / 0.2 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000, help="connections per handshake round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", type=int, default=2, help="client processes for handshakes")
    parser.add_argument("--mib", type=int, default=100, help="MiB through cat per relay round")
    parser.add_argument("--sessions", type=int, default=200, help="idle sessions for memory")
    parser.add_argument("--scenario", choices=("immediate", "starttls", "clientcert"),
                        default="immediate",
                        help="immediate: handshakes, relay and memory; starttls: ours -w "
                             "against stunnel's protocol = smtp; clientcert: ours -y -a CA "
                             "against stunnel's verifyChain + requireCert (handshakes only)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round, 400 connections, 20 MiB, 50 sessions")
    parser.add_argument("--python-flag", action="append", default=[],
                        help="a flag for the interpreter of our server, e.g. -S: no site "
                             "packages (a site .pth that imports threading or random adds "
                             "their fork hooks to every fork of the server; the TLS relay "
                             "server always runs with -S)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    OURS[1:1] = args.python_flag
    if args.worker:
        sys.stdout.write(json.dumps(handshake_worker(*json.loads(args.worker))))
        return
    if args.quick:
        args.rounds, args.count, args.mib, args.sessions = 1, 400, 20, 50
    if not os.access(STUNNEL, os.X_OK):
        sys.exit(f"{STUNNEL} missing: apt-get install stunnel4")
    t_start = time.monotonic()
    load = os.getloadavg()
    print(f"bench_tls: {os.cpu_count()} CPUs, load {load[0]:.2f}, {ssl.OPENSSL_VERSION}, "
          f"scenario {args.scenario}, rounds {args.rounds}, {args.count} conns at "
          f"c={args.concurrency} ({args.clients} client processes), {args.mib} MiB, "
          f"{args.sessions} sessions", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_tls.") as workdir:
        _, _, cert = make_cert(workdir)
        if args.scenario != "immediate":
            other_scenario(args, workdir, cert)
            return
        servers: Dict[str, Dict[str, Tuple[Proc, int]]] = {"hello": {}, "cat": {}}
        ours_err = ""
        try:
            for kind, prog in (("hello", ["/bin/echo", "hello"]), ("cat", ["/bin/cat"])):
                servers[kind]["stunnel"] = start_stunnel(cert, prog, workdir)
                if not ours_err:
                    try:
                        servers[kind]["ours"] = start_ours(cert, prog, 100)
                    except RuntimeError as exc:
                        ours_err = str(exc)
            if ours_err:
                servers["hello"].pop("ours", None)
                servers["cat"].pop("ours", None)
                print(f"ours: not run: {ours_err}")
            names = [n for n in ("ours", "stunnel") if n in servers["hello"]]
            for name in names:
                version, cipher, got = probe(servers["hello"][name][1])
                print(f"{name:8} {version} {cipher} -> {got!r}")
                if got != b"hello\n":
                    raise RuntimeError(f"{name}: unexpected output {got!r}")

            hs = handshake_rounds({n: servers["hello"][n] for n in names}, args)
            tp: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
            for number in range(args.rounds):
                for name in (names if number % 2 == 0 else names[::-1]):
                    proc, port = servers["cat"][name]
                    c0 = sum(tree_cpu(proc.pid))
                    res = relay(port, args.mib)
                    time.sleep(0.3)
                    res["server_s"] = (sum(tree_cpu(proc.pid)) - c0) / args.mib * 100
                    tp[name].append(res)
                    print(f"  round {number + 1} relay      {name:8} {res['mibs']:7.1f} MiB/s",
                          flush=True)
        finally:
            for group in servers.values():
                for proc, _ in group.values():
                    stop(proc)
        mem = memory(cert, args.sessions, workdir, "ours" in names)

    o_tp, s_tp = tp.get("ours", []), tp["stunnel"]
    print()
    print(f"median of {args.rounds} round(s); load now {os.getloadavg()[0]:.2f}; "
          f"{time.monotonic() - t_start:.0f} s")
    report_handshakes(hs.get("ours", []), hs["stunnel"], args, "echo hello")
    mo, ms = med(o_tp, "mibs"), med(s_tp, "mibs")
    print(f"{'relay MiB/s (%d MiB through cat)' % args.mib:44} {fmt(mo, '10.1f')} "
          f"{fmt(ms, '10.1f')} {ratio(mo, ms):>6}  {target(mo, ms, 0.8)}")
    paired(o_tp, s_tp, "mibs")
    a, b = med(o_tp, "server_s"), med(s_tp, "server_s")
    print(f"{'  server CPU s per 100 MiB (incl. cat)':44} {fmt(a, '10.2f')} {fmt(b, '10.2f')} "
          f"{ratio(a, b):>6}")
    n = args.sessions
    s = mem["stunnel"]
    o = mem.get("ours")

    def row(label: str, a: Optional[float], b: Optional[float], note: str = "") -> None:
        x = float("nan") if a is None else a
        y = float("nan") if b is None else b
        print(f"{label:44} {fmt(x, '10.0f')} {fmt(y, '10.0f')} {ratio(x, y):>6}  {note}".rstrip())

    def get(key: str) -> Optional[float]:
        return float(o[key]) if o else None

    print(f"memory, {n} idle sessions, USS KiB ({'ours: relay children and parent; ' if o else ''}"
          f"stunnel: its process)")
    row("  relay children (count)", get("kids"), None)
    row("  relay children, total", get("kids_uss"), None)
    row("  per relay child, median", get("kid_median"), None,
        "<= 3072 KiB" + (("  MET" if o["kid_max"] <= 3072 else "  MISSED") if o else ""))
    row("  per relay child, max", get("kid_max"), None)
    row("  server process (+ relay server), idle", get("idle"), s["idle"])
    row("  server process (+ relay server), sessions", get("top"), s["top"])
    total_o = o["top"] + o["kids_uss"] if o else None
    row("  USS, all (ours: parent + relay children)", total_o, s["top"])
    pss_o = o["top_pss"] + o["kids_pss"] if o else None
    row("  PSS, all (ours: parent + relay children)", pss_o, s["top_pss"])
    grow_o = (pss_o - o["idle_pss"]) / n if o and pss_o is not None else None
    row("  PSS growth per session", grow_o, (s["top_pss"] - s["idle_pss"]) / n)
    row("  programs (cat, not counted)", get("grandkids"), s["kids"])
    print("  (a relay child's USS = the pages it has made its own since the fork; the pages it\n"
          "   still shares with the parent leave the parent's USS too, hence PSS for totals)")


if __name__ == "__main__":
    main()
