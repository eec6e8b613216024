"""The rblsmtpd command: differential against Debian's C
``/usr/bin/rblsmtpd`` for everything djb 0.88 defines (the dialogue byte
for byte, the log line, ``-t``, ``-b``/``-B``, ``-c``/``-C`` on
failures, ``$RBLSMTPD``, the options' order, running the program, usage
errors), then ours alone for the additions (``base:message``, ``%IP%``,
IPv6, Spamhaus' error answers, no default list, ``--help``).

Both commands run directly, the client on pipes and its address in
``$TCPREMOTEIP``; the lists come from the suite's dnsmasq
(tests/fix_dns.py RECORDS "dnsbl") or from a fake name server on port
53 that both read through ``$DNSCACHEIP``.  One test runs ours under our
tcpserver with smtplib.  The pure order of the decision is checked
against a transcription of djb's code over every short command line.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import smtplib
import subprocess
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from tests.fix_dns import FakeDns, Query, fake_dns_on_53, response, rr
from tests.fix_server import Servers, clean_env
from tests.util import PYTHON, ROOT, need
from ucspi.dns import msg as dnsmsg
from ucspi.dns.conf import DnsConfig
from ucspi.rbl.lists import ALLOW, TEMPORARY, Answer, Decision, ListSpec, decide
from ucspi.rbl.order import Step, evaluate
from ucspi.rbl.ordered import ask

OURS = [PYTHON, os.path.join(ROOT, "rblsmtpd.py")]
C_RBLSMTPD = "/usr/bin/rblsmtpd"
TIMEOUT = 30
NO_REWRITE = "/nonexistent/ucspi-test-dnsrewrite"
#: what runs when the client is let in: says so, with its arguments and
#: two variables
PROG = ["/bin/sh", "-c", 'echo "ran:$0:$1:${RBLSMTPD-unset}:$TCPREMOTEIP"', "prog", "arg1"]
UNLISTED, LISTED, A_ONLY, ANTI, SPAMHAUS, A_ERROR = (
    "127.0.80.1", "127.0.80.2", "127.0.80.3", "127.0.80.4", "127.0.80.5", "127.0.80.6")
GREETING = b"220 rblsmtpd.local\r\n"
OK, BYE = b"250 rblsmtpd.local\r\n", b"221 rblsmtpd.local\r\n"

Result = Tuple[int, bytes, bytes]


def c_tool() -> List[str]:
    return [need(C_RBLSMTPD)]


def env_for(dns_ip: Optional[str] = None, **variables: Any) -> Dict[bytes, bytes]:
    """A small environment: PATH, the name server, and ``variables``
    (None: left out); bytes, so any value can be passed."""
    env = {b"PATH": os.environb.get(b"PATH", b"/usr/bin:/bin"),
           b"DNSREWRITEFILE": NO_REWRITE.encode()}
    if dns_ip is not None:
        env[b"DNSCACHEIP"] = dns_ip.encode()
    for name, value in variables.items():
        if value is not None:
            env[name.encode()] = value if isinstance(value, bytes) else str(value).encode()
    return env


def masked(stderr: bytes) -> bytes:
    return re.sub(rb" pid \d+: ", b" pid PID: ", stderr)


def run(command: Sequence[str], args: Sequence[str], env: Dict[bytes, bytes],
        client: Optional[bytes] = None, prog: Sequence[str] = PROG) -> Result:
    """Run one command to its end: exit code, standard output, standard
    error with the pid masked.  ``client`` is what the client sends
    (None: nothing, end of file at once)."""
    result = subprocess.run([*command, *args, *prog], env=env, capture_output=True,
                            input=client if client is not None else b"", timeout=TIMEOUT)
    return result.returncode, result.stdout, masked(result.stderr)


def both(args: Sequence[str], env: Dict[bytes, bytes], client: Optional[bytes] = None,
         prog: Sequence[str] = PROG) -> Result:
    """Ours and the C one on the same input: they must agree; returns
    the common result."""
    theirs = run(c_tool(), args, env, client, prog)
    mine = run(OURS, args, env, client, prog)
    assert mine == theirs, (args, client)
    return mine


def refused(code: int, text: bytes, ip: str = LISTED, talk: bool = False) -> Result:
    """What a refused client with no input gets, and the log line."""
    line = b"%d %s" % (code, text)
    out = GREETING if talk else line + b"\r\n"
    return 0, out, b"rblsmtpd: %s pid PID: %s\n" % (ip.encode(), line)


def ran(ip: str, rblsmtpd: str = "unset") -> Result:
    return 0, b"ran:prog:arg1:%s:%s\n" % (rblsmtpd.encode(), ip.encode()), b""


# -- the dialogue, byte for byte ----------------------------------------------------------
DIALOGUES = [
    b"helo x\r\nmail from:<a@b>\r\nrcpt to:<c@d>\r\ndata\r\nquit\r\n",
    b"HeLo x\r\nEHLO y\r\nMaIl FROM:<a>\r\nRSET\r\nNoOp\r\nVRFY x\r\nExpn y\r\nQUIT\r\n",
    b"helo x\nrcpt to:<a>\ndata\nquit\n",                              # bare LF
    b"helo x\r\r\nhelo\r\nhelo \r\n\rhelo\r\nhel\ro\r\n",             # odd CRs
    b"\r\n\n  \r\n helo\r\nhelo\tx\r\n",                             # empty, blanks, tab
    b"helo\0junk\r\nquit\0x\r\nnoop\r\n",                            # NUL ends the command
    b"quit\r\nhelo\r\nrcpt to:<x>\r\n",                              # data after quit
    b"QUIT extra words\r\nhelo\r\n",
    b"helo x\r\nrcpt to:<a>\r\nmail",                                # EOF mid-line
    b"x" * 300 + b"\r\nhelo " + b"y" * 5000 + b"\r\n" + b"noop" + b" " * 2000 + b"z\r\n",
    b"",
    b"starttls\r\nauth plain x\r\nbdat 10 last\r\nhelp\r\nrcpt\r\ndata\r\n",
    bytes(range(1, 256)) + b"\r\nhelo\r\n",
]


@pytest.mark.parametrize("client", DIALOGUES, ids=range(len(DIALOGUES)))
def test_dialogue_is_the_c_ones(client: bytes) -> None:
    code, out, err = both(["-t", "10"], env_for(RBLSMTPD="go away", TCPREMOTEIP="10.0.0.1"),
                          client)
    assert code == 0 and out.startswith(GREETING)
    assert err == b"rblsmtpd: 10.0.0.1 pid PID: 451 go away\n"


def test_dialogue_sample() -> None:
    _, out, _ = both([], env_for(RBLSMTPD="-no", TCPREMOTEIP="10.0.0.1"),
                     b"helo x\r\nrcpt to:<y>\r\nQUIT\r\nrcpt\r\n")
    assert out == GREETING + OK + b"553 no\r\n" + BYE


@pytest.mark.parametrize("value", [
    b"go away", b"-bounce me", b"-", b"x" * 300, b"tab\there\x01\x7f\xff\xc3\xa9 end",
    b"-" + b"y" * 250,
])
def test_log_and_refusal_lines(value: bytes) -> None:
    """The text cut to 200 bytes, bytes outside 32..126 as '?', in the
    log line and the refusal; ``-t 0``: the refusal is the greeting."""
    env = env_for(RBLSMTPD=value, TCPREMOTEIP="10.0.0.9")
    code, out, err = both(["-t0"], env, b"helo\r\n")
    text = value[1:] if value.startswith(b"-") else value
    line = b"%d " % (553 if value.startswith(b"-") else 451) + text[:200]
    line = bytes(b if 32 <= b <= 126 else 63 for b in line)
    assert (code, out, err) == (0, line + b"\r\n",
                                b"rblsmtpd: 10.0.0.9 pid PID: " + line + b"\n")


def test_no_client_address_in_the_log() -> None:
    assert both(["-t", "0"], env_for(RBLSMTPD="x"))[2] == b"rblsmtpd:  pid PID: 451 x\n"


def test_rblsmtpd_empty_lets_in_and_set_stops_the_lookups(dns_server: Any) -> None:
    env = env_for(dns_server.ip, RBLSMTPD="", TCPREMOTEIP=LISTED)
    assert both(["-r", "bl.test"], env) == ran(LISTED, "")
    env = env_for(dns_server.ip, RBLSMTPD="ruled", TCPREMOTEIP=UNLISTED)
    assert both(["-b", "-r", "bl.test", "-t0"], env) == refused(451, b"ruled", UNLISTED)
    env = env_for(dns_server.ip, RBLSMTPD="-ruled", TCPREMOTEIP=UNLISTED)
    assert both(["-r", "bl.test", "-t0"], env) == refused(553, b"ruled", UNLISTED)


def test_the_timeout_is_for_the_whole_dialogue() -> None:
    """djb sets one alarm before the greeting: a client that keeps
    talking is dropped all the same."""
    env = env_for(RBLSMTPD="x", TCPREMOTEIP="10.0.0.1")
    for command in (c_tool(), OURS):
        proc = subprocess.Popen([*command, "-t", "2", *PROG], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None
        start = time.monotonic()
        try:
            assert proc.stdout.read(len(GREETING)) == GREETING
            while proc.poll() is None and time.monotonic() - start < 10:
                try:       # past the buffer: nothing left for close() to flush
                    os.write(proc.stdin.fileno(), b"noop\r\n")
                except BrokenPipeError:
                    break
                time.sleep(0.2)
            assert proc.wait(10) == 0
            assert 1.5 < time.monotonic() - start < 8, command
            rest = proc.stdout.read()
            assert rest and rest.replace(OK, b"") == b"", command
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
            proc.stdout.close()


def test_a_closed_client_ends_it_like_the_c_one() -> None:
    """A write to a closed pipe kills both with SIGPIPE (djb never
    ignores it, and the program must not inherit Python's SIG_IGN)."""
    env = env_for(RBLSMTPD="x", TCPREMOTEIP="10.0.0.1")
    codes = []
    for command in (c_tool(), OURS):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            codes.append(subprocess.run([*command, "-t0", *PROG], env=env, stdout=write_end,
                                        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        timeout=TIMEOUT).returncode)
        finally:
            os.close(write_end)
    assert codes == [-signal.SIGPIPE] * 2
    prog = ["/bin/grep", "SigIgn", "/proc/self/status"]
    out = run(OURS, [], env_for(), prog=prog)[1]
    mask = int(out.split()[-1], 16)
    assert not mask & (1 << (signal.SIGPIPE - 1)) and not mask & (1 << (signal.SIGXFSZ - 1))


# -- the lists (dnsmasq) ----------------------------------------------------------------------
LISTED_TEXT = b"Listed: see https://bl.test/127.0.80.2"


@pytest.mark.parametrize("args, code", [
    (["-r", "bl.test"], 451), (["-B", "-r", "bl.test"], 451), (["-b", "-r", "bl.test"], 553),
    (["-r", "bl.test", "-b"], 451), (["-bB", "-r", "bl.test"], 451),
    (["-Bb", "-r", "bl.test", "-B"], 553), (["-rbl.test"], 451),
    (["-r", "nothing.test", "-b", "-r", "bl.test"], 553),
])
def test_listed_client_and_the_bounce_flags(dns_server: Any, args: List[str], code: int) -> None:
    env = env_for(dns_server.ip, TCPREMOTEIP=LISTED)
    assert both([*args, "-t", "0"], env) == refused(code, LISTED_TEXT)


def test_unlisted_client_runs_the_program(dns_server: Any) -> None:
    env = env_for(dns_server.ip, TCPREMOTEIP=UNLISTED)
    assert both(["-r", "bl.test", "-a", "allow.test", "-r", "nothing.test"], env) == \
        ran(UNLISTED)


def test_an_a_record_alone_is_no_txt_listing(dns_server: Any) -> None:
    assert both(["-r", "bl.test"], env_for(dns_server.ip, TCPREMOTEIP=A_ONLY)) == ran(A_ONLY)


@pytest.mark.parametrize("args, outcome", [
    (["-a", "allow.test", "-r", "bl.test"], "ran"),
    (["-r", "bl.test", "-a", "allow.test"], "refused"),
    (["-a", "nothing.test", "-r", "bl.test"], "refused"),
])
def test_anti_lists_in_order(dns_server: Any, args: List[str], outcome: str) -> None:
    env = env_for(dns_server.ip, TCPREMOTEIP=ANTI)
    if outcome == "ran":
        assert both(args, env) == ran(ANTI)
    else:
        assert both([*args, "-t0"], env) == refused(451, b"Listed too", ANTI)


def test_dialogue_after_a_listing(dns_server: Any) -> None:
    env = env_for(dns_server.ip, TCPREMOTEIP=LISTED)
    _, out, _ = both(["-b", "-r", "bl.test"], env, b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<y>\r\n")
    assert out == GREETING + OK + OK + b"553 " + LISTED_TEXT + b"\r\n"


# -- failures (a fake name server) ----------------------------------------------------------
TXT, A = dnsmsg.TYPE_TXT, dnsmsg.TYPE_A


def txt(*strings: bytes) -> bytes:
    """TXT record data: each character-string with its length."""
    return b"".join(bytes([len(text)]) + text for text in strings)


def fake_answers(query: Query) -> List[Tuple[float, bytes]]:
    """``list.test``: TXT ``listed by list.test`` (and A 127.0.0.2);
    ``ok.test``: A 127.0.0.2; ``two.test``: two TXT records;
    ``empty.test``: one empty TXT string; ``bad.test``: a malformed
    answer (an answer counted, none there), which both resolvers take
    for a failure at once; ``silent.test``: nothing; anything else: no
    such name."""
    labels = dnsmsg.labels(query.name)
    zone = b".".join(labels[-2:]).lower()
    here = b"\xc0\x0c"
    records = {
        (b"list.test", TXT): [rr(here, TXT, txt(b"listed by list.test"))],
        (b"list.test", A): [rr(here, A, bytes([127, 0, 0, 2]))],
        (b"ok.test", A): [rr(here, A, bytes([127, 0, 0, 2]))],
        (b"two.test", TXT): [rr(here, TXT, txt(b"one")), rr(here, TXT, txt(b" tw", b"o"))],
        (b"empty.test", TXT): [rr(here, TXT, txt(b""))],
    }
    if zone == b"bad.test":
        return [(0, response(query, [b""]))]
    if zone == b"silent.test":
        return []
    found = records.get((zone, query.qtype))
    if found is None:
        known = any(z == zone for z, _ in records)
        return [(0, response(query, rcode=0 if known else 3))]
    return [(0, response(query, found))]


@pytest.fixture(scope="module")
def lists_server() -> Iterator[FakeDns]:
    with fake_dns_on_53(fake_answers) as fake:
        yield fake


FAILURES = [
    ["-r", "bad.test"],                              # fail open: let in
    ["-c", "-r", "bad.test"],                        # fail closed: 451 temporary
    ["-r", "bad.test", "-c"],                        # -c too late
    ["-b", "-r", "bad.test", "-r", "list.test"],     # a failure first: 451 despite -b
    ["-b", "-r", "list.test", "-r", "bad.test"],     # listed first: 553
    ["-a", "bad.test", "-r", "list.test"],           # a failed anti-list lets in (-C)
    ["-c", "-a", "bad.test", "-r", "list.test"],     # ... not with -c: 451
    ["-c", "-b", "-a", "bad.test", "-r", "list.test"],
    ["-c", "-a", "bad.test", "-r", "nothing.test"],  # nobody lists: let in
    ["-c", "-r", "nothing.test", "-C", "-r", "bad.test", "-c", "-r", "list.test"],
    ["-a", "ok.test", "-c", "-r", "bad.test"],
    ["-r", "two.test"], ["-r", "empty.test"], ["-b", "-r", "empty.test", "-r", "list.test"],
    ["-r", "list.test", "-r", "list.test"],
    ["-t", "0", "-c", "-r", "bad.test", "-t", "5"],  # the last -t counts
]


@pytest.mark.parametrize("args", FAILURES, ids=[" ".join(a) for a in FAILURES])
def test_failures_and_order_as_the_c_one(lists_server: FakeDns, args: List[str]) -> None:
    env = env_for(lists_server.ip, TCPREMOTEIP="192.0.2.1")
    both(args, env, b"helo x\r\nrcpt to:<y>\r\nquit\r\n")


def test_failure_outcomes(lists_server: FakeDns) -> None:
    """A few of the above, spelt out."""
    env = env_for(lists_server.ip, TCPREMOTEIP="192.0.2.1")
    ip = "192.0.2.1"
    assert run(OURS, ["-r", "bad.test"], env) == ran(ip)
    assert run(OURS, ["-c", "-r", "bad.test", "-t0"], env) == refused(451, TEMPORARY, ip)
    assert run(OURS, ["-b", "-r", "bad.test", "-r", "list.test", "-t0"], env) == \
        refused(451, b"listed by list.test", ip)
    assert run(OURS, ["-c", "-b", "-a", "bad.test", "-r", "list.test", "-t0"], env) == \
        refused(451, b"listed by list.test", ip)
    assert run(OURS, ["-r", "two.test", "-t0"], env) == refused(451, b"one two", ip)
    assert run(OURS, ["-r", "empty.test"], env) == ran(ip)


def test_a_listing_does_not_wait_for_the_lists_after_it(lists_server: FakeDns) -> None:
    """djb's second list is never asked; ours is asked but not waited
    for (a silent one would take the whole deadline)."""
    env = env_for(lists_server.ip, TCPREMOTEIP="192.0.2.7")
    start = time.monotonic()
    both(["-r", "list.test", "-r", "silent.test", "-t0"], env)
    assert time.monotonic() - start < 10


# -- running the program, usage errors ---------------------------------------------------------
def test_the_program_runs_in_the_same_process() -> None:
    prog = ["/bin/sh", "-c", 'echo $$ "$@"', "sh", "a b", "c"]
    for command in (c_tool(), OURS):
        proc = subprocess.Popen([*command, *prog], env=env_for(TCPREMOTEIP="10.0.0.1"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        out, _ = proc.communicate(timeout=TIMEOUT)
        assert out == b"%d a b c\n" % proc.pid
        assert proc.returncode == 0


def test_the_programs_exit_code_and_environment() -> None:
    env = env_for(TCPREMOTEIP="10.0.0.1", RBLSMTPD="", OTHER=b"\xff\x01")
    prog = ["/bin/sh", "-c", 'printf "%s|%s" "$OTHER" "$RBLSMTPD"; exit 7']
    assert both([], env, prog=prog) == (7, b"\xff\x01|", b"")


@pytest.mark.parametrize("prog, path", [
    (["/nonexistent/smtpd"], None), (["/etc"], None), (["/etc/passwd"], None),
    (["no-such-smtpd"], None), (["no-such-smtpd"], ""), (["sh", "-c", "echo found"], None),
    (["sh", "-c", "echo found"], "/nonexistent:/etc:/bin"), (["passwd"], "/etc:/nowhere"),
    (["rblsmtpd-x"], ":/nonexistent"),
])
def test_running_and_not_running_the_program(prog: List[str], path: Optional[str]) -> None:
    env = env_for(TCPREMOTEIP="10.0.0.1")
    if path is not None:
        env[b"PATH"] = path.encode()
    code, out, err = both([], env, prog=prog)
    assert code in (0, 111)


def test_without_path_the_search_is_bin_and_usr_bin() -> None:
    env = env_for(TCPREMOTEIP="10.0.0.1")
    del env[b"PATH"]
    assert both([], env, prog=["sh", "-c", "echo found"]) == (0, b"found\n", b"")


@pytest.mark.parametrize("args", [
    [], ["-x", "prog"], ["-t"], ["-r"], ["-a"], ["-b"], ["-b", "--"], ["-bx"], ["-t5"],
    ["-r", "bl.test"], ["-B", "-C", "-c", "-t", "5"], ["--", "-b"], ["-", "x"],
])
def test_usage_errors(args: List[str]) -> None:
    """The same exit code and message; the usage line names the real
    options (djb's says ``[ -b ] [ -R ]``)."""
    env = env_for(TCPREMOTEIP="10.0.0.1", RBLSMTPD="")
    theirs = run(c_tool(), args, env, prog=())
    mine = run(OURS, args, env, prog=())
    assert mine[0] == theirs[0]
    if theirs[0] == 100:
        assert theirs[2].endswith(b"rblsmtpd: usage: rblsmtpd [ -b ] [ -R ] [ -t timeout ] "
                                  b"[ -r base ] [ -a base ] smtpd [ arg ... ]\n")
        assert mine[2].endswith(b"rblsmtpd: usage: rblsmtpd [ -bBcC ] [ -t timeout ] "
                                b"[ -r base ] [ -a base ] smtpd [ arg ... ]\n")
        assert mine[2].splitlines()[:-1] == theirs[2].splitlines()[:-1]
    else:
        assert mine == theirs


def test_double_dash_ends_the_options() -> None:
    env = env_for(TCPREMOTEIP="10.0.0.1", RBLSMTPD="")
    assert both(["-b", "--"], env, prog=["/bin/echo", "-b"]) == (0, b"-b\n", b"")


# -- ours alone ---------------------------------------------------------------------------
def ours_only(args: Sequence[str], env: Dict[bytes, bytes], client: Optional[bytes] = None,
              prog: Sequence[str] = PROG) -> Result:
    return run(OURS, args, env, client, prog)


def test_a_list_with_a_message(dns_server: Any) -> None:
    env = env_for(dns_server.ip, TCPREMOTEIP=A_ONLY)
    assert ours_only(["-r", "bl.test:blocked_by %IP%: see it", "-t0"], env) == \
        refused(451, b"blocked_by 127.0.80.3: see it", A_ONLY)
    assert ours_only(["-b", "-r", "bl.test:x"], env, b"rcpt\r\n")[1] == \
        GREETING + b"553 x\r\n"
    env = env_for(dns_server.ip, TCPREMOTEIP=UNLISTED)
    assert ours_only(["-r", "bl.test:blocked"], env) == ran(UNLISTED)


def test_ip_in_rblsmtpd_variable() -> None:
    env = env_for(TCPREMOTEIP="10.1.2.3", RBLSMTPD="-no mail from %IP%, %IP%")
    assert ours_only(["-t0"], env) == refused(553, b"no mail from 10.1.2.3, 10.1.2.3",
                                              "10.1.2.3")


def test_greeting_name() -> None:
    env = env_for(TCPREMOTEIP="10.1.2.3", RBLSMTPD="x", RBLGREETING="mx.example")
    assert ours_only([], env, b"helo\r\nrcpt\r\nquit\r\n")[1] == \
        b"220 mx.example\r\n250 mx.example\r\n451 x\r\n221 mx.example\r\n"


@pytest.mark.parametrize("variables, ip", [
    ({"PROTO": "TCP6", "TCP6REMOTEIP": "::1", "TCPREMOTEIP": UNLISTED}, "::1"),
    ({"PROTO": "TCP6", "TCPREMOTEIP": "::1"}, "::1"),                  # falls back
    ({"PROTO": "TCP", "TCPREMOTEIP": "::ffff:" + LISTED, "TCP6REMOTEIP": "::1"},
     "::ffff:" + LISTED),                                              # mapped: IPv4
])
def test_ipv6_clients(dns_server: Any, variables: Dict[str, str], ip: str) -> None:
    env = env_for(dns_server.ip, **variables)
    text = LISTED_TEXT if "ffff" in ip else b"IPv6 listed"
    assert ours_only(["-r", "bl.test", "-t0"], env) == refused(451, text, ip)


def test_ipv6_unlisted(dns_server: Any) -> None:
    env = env_for(dns_server.ip, PROTO="TCP6", TCP6REMOTEIP="2001:db8::99")
    assert ours_only(["-r", "bl.test"], env) == ran("")


WARNING = (b"rblsmtpd: warning: bl.test answered %s with a query error, not a listing: %s\n")
OPEN_RESOLVER = b"Error: open resolver; https://check.spamhaus.org/returnc/pub/127.0.80.5/"


def test_spamhaus_errors_are_failures_not_listings(dns_server: Any) -> None:
    env = env_for(dns_server.ip, TCPREMOTEIP=SPAMHAUS)
    warn = WARNING % (SPAMHAUS.encode(), OPEN_RESOLVER)
    # djb's takes the error text for a listing and refuses all mail:
    assert run(c_tool(), ["-r", "bl.test", "-t0"], env)[1] == b"451 " + OPEN_RESOLVER + b"\r\n"
    assert ours_only(["-b", "-r", "bl.test"], env) == (0, ran(SPAMHAUS)[1], warn)
    code, out, err = ours_only(["-c", "-r", "bl.test", "-t0"], env)
    assert out == b"451 temporary RBL lookup error\r\n"
    assert err == warn + b"rblsmtpd: 127.0.80.5 pid PID: 451 temporary RBL lookup error\n"
    # an A error (127.255.255.254), for an A list and for an anti-list
    env = env_for(dns_server.ip, TCPREMOTEIP=A_ERROR)
    warn = WARNING % (A_ERROR.encode(), b"query error 127.255.255.254")
    assert ours_only(["-r", "bl.test:listed"], env) == (0, ran(A_ERROR)[1], warn)
    assert ours_only(["-c", "-r", "bl.test:listed", "-t0"], env)[1] == \
        b"451 temporary RBL lookup error\r\n"
    assert ours_only(["-c", "-a", "bl.test", "-r", "bl.test"], env) == (0, ran(A_ERROR)[1], warn)


def test_no_default_list(lists_server: FakeDns) -> None:
    """Without -r nothing is asked (djb's would ask rbl.maps.vix.com)."""
    before = len(lists_server.queries)
    env = env_for(lists_server.ip, TCPREMOTEIP="192.0.2.1")
    assert ours_only(["-b", "-c", "-t", "5"], env) == ran("192.0.2.1")
    assert ours_only(["-a", "ok.test"], env) == ran("192.0.2.1")
    assert len(lists_server.queries) == before + 1                # the anti-list only


def test_no_address_fails_the_lookups(lists_server: FakeDns) -> None:
    env = env_for(lists_server.ip, TCPREMOTEIP="not-an-address")
    warning = b"rblsmtpd: warning: unable to ask the lists: not an IP address: not-an-address\n"
    assert ours_only(["-r", "list.test"], env) == (0, ran("not-an-address")[1], warning)
    assert ours_only(["-c", "-r", "list.test", "-t0"], env) == (
        0, b"451 temporary RBL lookup error\r\n",
        warning + b"rblsmtpd: not-an-address pid PID: 451 temporary RBL lookup error\n")


def test_help_version_and_checked_numbers() -> None:
    code, out, err = ours_only(["--help"], env_for(), prog=())
    assert code == 0 and err == b""
    assert out.startswith(b"rblsmtpd: usage: rblsmtpd [ -bBcC ]") and b"man rblsmtpd" in out
    for letter in "rabBcCt":
        assert re.search(rb"^  -%s\b" % letter.encode(), out, re.M), letter
    import ucspi
    assert ours_only(["--version"], env_for(), prog=()) == (
        0, b"rblsmtpd %s\n" % ucspi.__version__.encode(), b"")
    for bad in ("4x", "x", "-1", "99999999999", ""):
        code, out, err = ours_only(["-t", bad], env_for(RBLSMTPD=""))
        assert (code, out) == (100, b""), bad
        assert err.startswith(b"rblsmtpd: fatal: -t wants a number from 0 to 2147483647, not ")
    assert ours_only(["-t", "2147483647"], env_for(RBLSMTPD=""))[0] == 0


def test_under_our_tcpserver_with_smtplib(servers: Servers, dns_server: Any) -> None:
    srv = servers(["-v", "-HRl0"], prog=[*OURS, "-r", "bl.test", *PROG],
                  env=clean_env(DNSCACHEIP=dns_server.ip, DNSREWRITEFILE=NO_REWRITE))
    with smtplib.SMTP(timeout=15, source_address=(LISTED, 0)) as client:
        code, _ = client.connect("127.0.0.1", srv.port)
        assert code == 220
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n")
        assert info.value.recipients["b@example.org"] == (451, LISTED_TEXT)
    srv.wait_log(r"^rblsmtpd: 127\.0\.80\.2 pid \d+: 451 Listed: see https://bl\.test/")
    with srv.connect(source=UNLISTED, timeout=15) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(100)
            if not chunk:
                break
            data += chunk
    assert data == b"ran:prog:arg1:unset:127.0.80.1\n"


def test_man_page_example_rules_compile() -> None:
    from ucspi.rules.parse import parse_line
    with open(os.path.join(ROOT, "man", "rblsmtpd.1")) as f:
        page = f.read()
    block = page.split("# /etc/ucspi/smtp.rules\n", 1)[1].split(".fi", 1)[0]
    lines = [line.replace("\\-", "-") for line in block.splitlines() if line]
    assert len(lines) == 3
    for line in lines:
        assert parse_line(line.encode()), line


# -- the order of the decision (pure) --------------------------------------------------------
LISTED_A = Answer(True, False, b"listed")
UNLISTED_A = Answer(False, False)
ERROR_A = Answer(False, True, b"Error: open resolver")
KINDS = {"listed": LISTED_A, "unlisted": UNLISTED_A, "error": ERROR_A, "none": None}


def djb(steps: Sequence[Step], answers: Sequence[Optional[Answer]]) -> Decision:
    """djb's main() and rbl()/antirbl(), transcribed: one lookup after
    the other, stopping at the first decision."""
    decision, text = 0, b""
    bounce = fail_closed = must_not_bounce = False
    for step, answer in zip(steps, answers):
        letter = step.letter
        if letter in "bB":
            bounce = letter == "b"
        elif letter in "cC":
            fail_closed = letter == "c"
        elif decision:
            continue
        elif answer is None or answer.error:
            must_not_bounce = True
            if letter == "r" and fail_closed:
                decision, text = 2, TEMPORARY
            elif letter == "a" and not fail_closed:
                decision = 1
        elif answer.listed:
            if letter == "a":
                decision = 1
            else:
                decision, text = (3 if bounce else 2), answer.text
    if decision < 2:
        return ALLOW
    return Decision(True, 451 if must_not_bounce or decision == 2 else 553, text)


def command_lines(size: int) -> Iterator[Tuple[List[Step], List[Optional[Answer]]]]:
    choices: List[Tuple[Step, Optional[Answer]]] = [(Step(f), None) for f in "bBcC"]
    for letter in "ra":
        for kind in KINDS.values():
            choices.append((Step(letter, ListSpec(letter + ".test")), kind))
    for line in itertools.product(choices, repeat=size):
        yield [step for step, _ in line], [answer for _, answer in line]


@pytest.mark.unit
def test_evaluate_is_djbs_walk_for_every_short_command_line() -> None:
    """Every command line of up to 4 options (flags, lists, anti-lists,
    each answer listed / not / query error / no answer): the replay
    gives djb's decision, and so does any subset of the answers as soon
    as the replay says it is enough."""
    checked = 0
    for size in range(1, 5):
        for steps, answers in command_lines(size):
            want = djb(steps, answers)
            full = {i: a for i, a in enumerate(answers) if steps[i].asks}
            outcome = evaluate(steps, None, full, True)
            assert outcome is not None
            got = outcome.decision._replace(base="")
            assert got == want, (steps, answers)
            asked = sorted(full)
            for count in range(len(asked)):
                for subset in itertools.combinations(asked, count):
                    early = evaluate(steps, None, {i: full[i] for i in subset}, False)
                    if early is not None:
                        assert early.decision._replace(base="") == want
            checked += 1
    assert checked > 10000


@pytest.mark.unit
def test_the_loops_rule_differs_from_djbs_order() -> None:
    """Why the command does not use lists.decide (tcpserver's DNSBL):
    there anti-lists win whatever the order, flags apply to all, and a
    failed anti-list with fail-closed refuses."""
    bl, ok = ListSpec("bl.test"), "ok.test"
    steps = [Step("r", bl), Step("a", ListSpec(ok))]
    outcome = evaluate(steps, None, {0: LISTED_A, 1: LISTED_A}, True)
    assert outcome is not None and outcome.decision.refuse
    assert decide([bl], [LISTED_A], [LISTED_A], False, False) == ALLOW
    steps = [Step("c"), Step("a", ListSpec(ok)), Step("r", bl)]
    outcome = evaluate(steps, None, {1: None, 2: UNLISTED_A}, True)
    assert outcome is not None and not outcome.decision.refuse
    assert decide([bl], [UNLISTED_A], [None], True, False).refuse


@pytest.mark.unit
def test_preset_and_errors_reported() -> None:
    steps = [Step("r", ListSpec("a.test")), Step("r", ListSpec("b.test"))]
    forced = Decision(True, 553, b"ruled")
    assert evaluate(steps, forced, {}, False) == (forced, ())
    outcome = evaluate(steps, None, {0: ERROR_A, 1: LISTED_A}, True)
    assert outcome is not None
    assert outcome.errors == (("a.test", b"Error: open resolver"),)
    assert outcome.decision == Decision(True, 451, b"listed", "b.test")


def silent_or_listed(query: Query) -> List[Tuple[float, bytes]]:
    if b"silent" in query.name:
        return []
    return [(0, response(query, [rr(b"\xc0\x0c", TXT, txt(b"listed"))]))]


@pytest.mark.unit
def test_driver_deadline_and_early_decision() -> None:
    with FakeDns(silent_or_listed) as fake:
        conf = DnsConfig(servers=[(fake.ip, 0)], port=fake.port, rules=[],
                         udp_timeouts=(5.0,), tcp_timeout=1.0)
        listed = Step("r", ListSpec("listed.test"))
        silent = Step("r", ListSpec("silent.test"))
        start = time.monotonic()
        outcome = ask("192.0.2.1", [Step("b"), listed, silent], None, conf, timeout=3.0)
        assert outcome.decision == Decision(True, 553, b"listed", "listed.test")
        assert time.monotonic() - start < 2.5                     # not the deadline
        start = time.monotonic()
        outcome = ask("192.0.2.1", [Step("b"), silent, listed], None, conf, timeout=1.0)
        assert time.monotonic() - start >= 0.9                    # waited for the first
        assert outcome.decision == Decision(True, 451, b"listed", "listed.test")
        outcome = ask("192.0.2.1", [Step("c"), silent], None, conf, timeout=0.5)
        assert outcome.decision == Decision(True, 451, TEMPORARY)


@pytest.mark.unit
def test_no_socket_for_the_lookups_is_a_failure(monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    from ucspi.tools import rblsmtpd

    def no_socket(*args: Any, **kwargs: Any) -> None:
        raise OSError(24, "Too many open files")
    monkeypatch.setattr(rblsmtpd, "ask", no_socket)
    opts = rblsmtpd.parse(["-c", "-r", "bl.test", "prog"])
    assert rblsmtpd.decide(opts, {"TCPREMOTEIP": "192.0.2.1"}) == Decision(True, 451, TEMPORARY)
    assert capfd.readouterr().err == \
        "rblsmtpd: warning: unable to ask the lists: process cannot open more files\n"
    opts = rblsmtpd.parse(["-r", "bl.test", "prog"])
    assert rblsmtpd.decide(opts, {"TCPREMOTEIP": "192.0.2.1"}) == ALLOW


def test_man_page_documents_every_option_and_the_move() -> None:
    mandoc = need("mandoc")
    text = subprocess.run([mandoc, "-Tascii", os.path.join(ROOT, "man", "rblsmtpd.1")],
                          capture_output=True, check=True, timeout=30).stdout.decode()
    text = re.sub(".\b", "", text)
    options = text.split("\nOPTIONS\n", 1)[1].split("\nENVIRONMENT\n", 1)[0]
    for letter in "rabBcCt":
        assert re.search(r"^       -%s(\s|$)" % letter, options, re.M), letter
    flat = " ".join(text.split())
    for needle in ("DNSBL=zen.spamhaus.org tcpserver", "public resolver", "127.255.255.254",
                   "DNSBL_ALLOW", "DNSBL_FAIL=closed", "DNSBL_BOUNCE=1", "60 seconds",
                   "-t 0", "%IP%", "TCP6REMOTEIP", "RBLGREETING", "no default list"):
        assert needle in flat, needle
