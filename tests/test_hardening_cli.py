"""Issue 7, the command-line defects: huge numbers (4), help and version
(9), and the seeded fuzz of command lines and rules inputs.  Defect 5
is in tests/test_privs.py, 8 in tests/test_packaging.py, 10 in
tests/test_tcprules.py.

Every bad input gets one line in the house style and exit 100 (usage,
parse error) or 111 (temporary), never a traceback.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

from tests.fix_dns import Query, fake_dns_on_53, response, rr
from tests.fix_rules import OUR_TCPRULES, OUR_TCPRULESCHECK
from tests.fix_server import OURS, clean_env, run_once
from tests.util import PYTHON, ROOT
from ucspi import scan
from ucspi.options import HELP, MAX_NUMBER, USAGE, parse
from ucspi.tools.tcprules import HELP as OUR_RULES_HELP
from ucspi.tools.tcprulescheck import HELP as OUR_CHECK_HELP
from ucspi.rules.lookup import apply
from ucspi.rules.parse import NoColonError, RuleSyntaxError, parse_line

HUGE = "9" * 5000
PROG = ["127.0.0.1", "0", "true"]
NOLOOKUP = ["-HR", "-l0"]
STARTUPS = os.path.join(ROOT, "tests", "startups.py")
#: DNSREWRITEFILE: a file that does not exist, so /etc/dnsrewrite never leaks in
NO_REWRITE = "/nonexistent/ucspi-test-dnsrewrite"


def one_fatal_line(result: "subprocess.CompletedProcess[bytes]", code: int,
                   prog: str = "tcpserver") -> str:
    """The single ``<prog>: fatal: ...`` line of a failed run."""
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert (result.returncode, err.count("\n")) == (code, 1), err
    assert err.startswith(f"{prog}: fatal: "), err
    assert len(err) < 300, err                 # the 5,000 digits are not echoed
    return err


# -- the one bounded parser ---------------------------------------------------------------
@pytest.mark.parametrize("text, maximum, value", [
    ("0", 10, 0), ("10", 10, 10), ("11", 10, None), ("007", 10, 7), ("0" * 5000 + "7", 10, 7),
    ("", 10, None), ("-1", 10, None), ("+1", 10, None), (" 1", 10, None), ("1 ", 10, None),
    ("\u0664", 10, None), ("\u00b2", 10, None), ("1_0", 10, None), (HUGE, 2**64, None),
    (b"42", 100, 42), (b"\xd9\xa4", 100, None), (b"9" * 5000, 100, None),
    ("4294967294", scan.ID_MAX, 4294967294), ("4294967295", scan.ID_MAX, None),
])
def test_decimal(text, maximum: int, value: Optional[int]) -> None:
    assert scan.decimal(text, maximum) == value


@pytest.mark.parametrize("text, value", [
    ("7x", 7), ("x", 0), ("", 0), ("12", 12), (HUGE, MAX_NUMBER), (HUGE + "x", MAX_NUMBER),
    ("0" * 5000 + "5", 5), ("\u0664", 0), (b"33\x00", 33), (b"9" * 5000, MAX_NUMBER),
])
def test_leading_clamps(text, value: int) -> None:
    assert scan.leading(text, MAX_NUMBER) == value


def test_the_parser_never_converts_a_long_string() -> None:
    # even under a lower limit than the default 4300, nothing raises
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("no int-max-str-digits limit on this Python")
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        assert scan.decimal("9" * 100000, 2**64) is None
        assert scan.leading("9" * 100000, 100) == 100
        assert parse(PROG, {"MAXPERIP": "9" * 100000}).max_per_host == MAX_NUMBER
    finally:
        sys.set_int_max_str_digits(old)


def test_shown_cuts_long_texts() -> None:
    assert scan.shown("abc") == "'abc'"
    assert scan.shown(HUGE) == "'" + "9" * 24 + "'... (5000 characters)"


# -- defect 4: huge numbers, end to end ---------------------------------------------------
@pytest.mark.parametrize("argv, env, needle", [
    (["-c", HUGE, *PROG], {}, "-c wants a number from 1 to 2147483647"),
    (["-C", HUGE, *PROG], {}, "-C wants a number from 0 to 2147483647"),
    (["-b", HUGE, *PROG], {}, "-b wants a number"),
    (["-t", HUGE, *PROG], {}, "-t wants a number"),
    (["-u", HUGE, *PROG], {}, "-u wants a number from 0 to 4294967294"),
    (["-g", HUGE, *PROG], {}, "-g wants group names or numbers from 0 to 4294967294"),
    (["-g", "daemon," + HUGE, *PROG], {}, "-g wants group names or numbers"),
    (["-I", HUGE, *PROG], {}, "-I wants an interface name or a number from 0 to 4294967295"),
    (["127.0.0.1", HUGE, "true"], {}, "the port wants a number from 0 to 65535"),
    (["127.0.0.1", "65536", "true"], {}, "the port wants a number from 0 to 65535"),
    (["::1%" + HUGE, "0", "true"], {}, "the host's scope id wants an interface name or a number"),
    (["fe80::1%4294967296", "0", "true"], {}, "the host's scope id wants"),
    (["-U", *PROG], {"UID": HUGE}, "-U: $UID wants a number from 0 to 4294967294"),
    (["-U", *PROG], {"UID": "1", "GID": HUGE}, "-U: $GID wants a number from 0 to 4294967294"),
])
def test_huge_numbers_are_usage_errors(argv: List[str], env: Dict[str, str], needle: str) -> None:
    result = run_once(OURS, [*NOLOOKUP, *argv], env=clean_env(**env))
    err = one_fatal_line(result, 100)
    assert needle in err, err
    assert result.stdout == b""


def test_huge_maxperip_environment_means_no_limit(servers) -> None:
    # $MAXPERIP is read like C's scan_ulong, bounded: more than -C can
    # take counts as the largest -C, no practical limit
    assert parse(PROG, {"MAXPERIP": HUGE}).max_per_host == MAX_NUMBER
    assert parse(PROG, {"MAXPERIP": HUGE + "junk"}).max_per_host == MAX_NUMBER
    assert parse(PROG, {"MAXPERIP": "12junk"}).max_per_host == 12
    server = servers(["-v", *NOLOOKUP], prog=["echo", "ok"], env=clean_env(MAXPERIP=HUGE))
    assert server.talk() == b"ok\n"
    assert "warning" not in server.log()


def test_huge_maxperip_in_a_rule_value_is_clamped() -> None:
    assert apply(b"+MAXPERIP=" + HUGE.encode() + b"\0").maxperip == MAX_NUMBER
    assert apply(b"+MAXPERIP=5x\0").maxperip == 5
    assert apply(b"+MAXPERIP=\0").maxperip == 0


def test_huge_limit_file_is_one_fatal_line(tmp_path) -> None:
    limit = tmp_path / "concurrency"
    limit.write_text(HUGE + "\n")
    result = run_once(OURS, [*NOLOOKUP, "-c", str(limit), *PROG])
    err = one_fatal_line(result, 111)
    assert err == f"tcpserver: fatal: {limit} does not hold a number from 1 to 2147483647\n"


def test_huge_pid_file_is_stale(tmp_path, servers) -> None:
    pidfile = tmp_path / "pid"
    pidfile.write_text("9" * 60)
    server = servers([*NOLOOKUP, "-e", str(pidfile)], prog=["echo", "ok"])
    assert server.talk() == b"ok\n"
    assert pidfile.read_text() == str(server.pid)


@pytest.mark.parametrize("line", [
    "1.2.3.1-" + HUGE + ":allow", "1.2.3." + HUGE + "-5:allow", "1.2.3.1-18446744073709551616:allow",
    "1.2.3.0/" + HUGE + ":allow", "10.0.0.0/33:allow", "::/" + HUGE + ":deny",
])
def test_tcprules_huge_numbers_are_parse_errors(tmp_path, line: str) -> None:
    result = subprocess.run([*OUR_TCPRULES, "r.cdb", "r.tmp"], cwd=str(tmp_path),
                            input=line.encode() + b"\n", capture_output=True, timeout=30)
    assert result.returncode == 100
    assert result.stderr == b"tcprules: fatal: unable to parse this line: " + line.encode() + b"\n"
    assert not (tmp_path / "r.cdb").exists()


@pytest.mark.parametrize("ip", [
    "1.2.3." + HUGE, HUGE, "::1%" + HUGE, "1.2.3.1-" + HUGE, "1.2.3.4/" + HUGE,
    HUGE + ":" + HUGE, "::ffff:1.2.3." + HUGE,
])
def test_tcprulescheck_huge_remote_ip(tmp_path, ip: str) -> None:
    made = subprocess.run([*OUR_TCPRULES, "r.cdb", "r.tmp"], cwd=str(tmp_path),
                          input=b"1.2.3.4:deny\n10.0.0.0/8:deny\n:allow,MAXPERIP=\"" +
                          HUGE.encode() + b"\"\n", capture_output=True, timeout=30)
    assert made.returncode == 0, made.stderr
    result = subprocess.run([*OUR_TCPRULESCHECK, "r.cdb"], cwd=str(tmp_path),
                            env={"PATH": "/usr/bin:/bin", "TCPREMOTEIP": ip},
                            capture_output=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == (b"rule :\nset environment variable MAXPERIP=" + HUGE.encode() +
                             b"\nallow connection\n")


# -- defect 9: --help and --version ---------------------------------------------------------
def _commands() -> Dict[str, List[str]]:
    return {
        "tcpserver": [PYTHON, os.path.join(ROOT, "tcpserver.py")],
        "tcprules": list(OUR_TCPRULES),
        "tcprulescheck": list(OUR_TCPRULESCHECK),
    }


USAGES = {
    "tcpserver": USAGE,
    "tcprules": "tcprules: usage: tcprules rules.cdb rules.tmp\n",
    "tcprulescheck": "tcprulescheck: usage: tcprulescheck rules.cdb\n",
}
#: --help: the usage line, then a summary (issue 18, item 18)
HELPS = {
    "tcpserver": HELP,
    "tcprules": OUR_RULES_HELP.decode() + "\n",
    "tcprulescheck": OUR_CHECK_HELP.decode() + "\n",
}


@pytest.mark.parametrize("command", ["tcpserver", "tcprules", "tcprulescheck"])
def test_help_and_version(command: str) -> None:
    import ucspi
    argv = _commands()[command]
    helped = subprocess.run([*argv, "--help"], capture_output=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert (helped.returncode, helped.stderr) == (0, b"")
    assert helped.stdout.decode() == HELPS[command]
    assert helped.stdout.decode().startswith(USAGES[command] + "\n")
    assert helped.stdout.startswith(command.encode() + b": usage: " + command.encode() + b" ")
    versioned = subprocess.run([*argv, "--version"], capture_output=True, timeout=30,
                               stdin=subprocess.DEVNULL)
    assert (versioned.returncode, versioned.stderr) == (0, b"")
    assert versioned.stdout.decode() == f"{command} {ucspi.__version__}\n"


@pytest.mark.parametrize("name", ["tcpserver", "tcprules", "tcprulescheck"])
def test_help_and_version_of_python_dash_m(tmp_path, name: str) -> None:
    """``python3 -m ucspi`` (and a zipapp, by the same code) under each name."""
    import ucspi
    runner = ("import runpy, sys; sys.argv[0] = %r; "
              "runpy.run_module('ucspi', run_name='__main__', alter_sys=False)" % name)
    env = dict(os.environ, PYTHONPATH=ROOT)
    for flag, expected in (("--help", HELPS[name]), ("--version", f"{name} {ucspi.__version__}\n")):
        result = subprocess.run([PYTHON, "-c", runner, flag], capture_output=True, timeout=30,
                                cwd=str(tmp_path), env=env)
        assert (result.returncode, result.stdout.decode(), result.stderr) == (0, expected, b"")


def test_help_is_an_option_word_only() -> None:
    # after -B it is the banner; after the host it is the program's
    o = parse(["-B", "--help", *PROG], {})
    assert o.banner == b"--help"
    o = parse(["0", "0", "prog", "--help"], {})
    assert o.argv == ["prog", "--help"]


def test_usage_on_errors_is_djbs_line_without_refused_letters() -> None:
    result = run_once(OURS, ["0", "0"])
    assert result.returncode == 100
    assert result.stderr.decode() == USAGE
    assert USAGE.startswith("tcpserver: usage: tcpserver ")


# -- the fuzz: 500 seeded command lines ---------------------------------------------------
SEED = 20261129
#: the letters that work (TLS and -m included), those refused, and some unknown ones
WORKING = "qQvVUX146oOdDhHpPrRcCxBgulbtIemnsiaLfMNzSTwyY"
#: IndiMail's TLS start-up lines come before ``tcpserver: fatal: unable to initialize TLS``
TLS_LINES = ("tls_method: ", "tls_init: ", "SSL_CTX_", "unable to load CA certificate: ",
             "error reading dh parameters ")
UNKNOWN = "kKjJWZ9!-"
GOOD_NUMBERS = ["1", "2", "3", "40", "100", "2147483647", "007"]
BAD_NUMBERS = ["0", "65536", "2147483648", "4294967295", "18446744073709551616", HUGE,
               "9" * 4301, "-1", "-0", "+5", "5x", "x", "", " 7", "7 ", "0x10", "1e3", "1.5",
               "\u0664\u0665", "\u00b2", "0" * 5000 + "3", "\udcff"]
GOOD_HOSTS = ["0", "", "::", "0.0.0.0", "127.0.0.1", "127.000.000.001", "::1",
              "::ffff:127.0.0.1", "::1%lo", "::1%1", "ok.example"]
BAD_HOSTS = ["[127.0.0.1]", "127.1", "256.1.1.1", "1.2.3.4", "2001:db8::1", "::1%" + HUGE,
             "fe80::1%99999999999", "fe80::1%nosuchif", "::1%", "1.2.3.4%lo", "-", "--",
             "x" * 300, "no.example", "a..b", ".", "\udcff.example", "/tmp/ucspi-fuzz.sock",
             "127.0.0.1:80", "::g"]
BAD_PORTS = ["65536", "99999", HUGE, "-1", "SMTP", "nosuchservice", "0x10", " 80", "80 ",
             "\u0664", "+0"]
PROGRAMS = [["true"], ["/nonexistent/prog"], ["lib.so"], ["echo", "-q"], ["--"], ["-v"]]
USERS = ["nobody", "daemon", "root", "0", "65534", "12345", "nosuchuser", HUGE, "", "-1"]
GROUPS = ["3", "daemon", "daemon,sys", "0", ",", "nosuchgroup", "1," + HUGE, ""]


def _pick(rnd: random.Random, good: List[str], bad: List[str], p_bad: float = 0.15) -> str:
    return rnd.choice(bad if rnd.random() < p_bad else good)


def _command_line(rnd: random.Random, folder: str) -> Dict[str, object]:
    """One random command line and the environment it runs with: mostly
    plausible, with a bad part here and there (an unknown or refused
    letter, a bad number, host or port, a missing argument)."""
    files = [os.path.join(folder, name) for name in ("good", "zero", "huge", "words")]
    argv: List[str] = []
    for _ in range(rnd.randrange(6)):
        draw = rnd.random()
        letter = rnd.choice(UNKNOWN if draw < 0.03 else WORKING)
        word = "-" + letter
        if letter == "c":
            arg: Optional[str] = _pick(rnd, GOOD_NUMBERS, BAD_NUMBERS + files + ["nosuchfile"])
        elif letter in "CbtTS":
            arg = _pick(rnd, GOOD_NUMBERS, BAD_NUMBERS)
        elif letter == "u":
            arg = _pick(rnd, ["nobody", "daemon", "65534"], USERS)
        elif letter == "g":
            arg = _pick(rnd, ["daemon", "3"], GROUPS)
        elif letter == "I":
            arg = _pick(rnd, ["lo"], ["eth99", "1", "0", "4294967296", HUGE, ""])
        elif letter == "e":
            arg = os.path.join(folder, "pid%d" % rnd.randrange(3))
        elif letter in "xmBlnafMiL":
            arg = rnd.choice(["", "x", os.path.join(folder, "rules.cdb"), HUGE, "-v"])
        else:
            arg = None
        if arg is not None:
            if rnd.random() < 0.5 and arg:
                argv.append(word + arg)           # attached
            else:
                argv += [word, arg]
        elif rnd.random() < 0.3 and argv and argv[-1].startswith("-") and len(argv[-1]) > 1 \
                and argv[-1][-1] not in "cCxmBgulbtTeInafMiLS":
            argv[-1] += letter                    # clustered
        else:
            argv.append(word)
    if rnd.random() < 0.1:
        argv.append("--")
    prog = rnd.choice(PROGRAMS) if rnd.random() < 0.15 else ["true"]
    tail = [_pick(rnd, GOOD_HOSTS, BAD_HOSTS), _pick(rnd, ["0"], BAD_PORTS), *prog]
    argv += tail[:3 if rnd.random() < 0.95 else rnd.randrange(3)]   # sometimes missing
    env: Dict[str, str] = {}
    if rnd.random() < 0.2:
        env["MAXPERIP"] = _pick(rnd, GOOD_NUMBERS, BAD_NUMBERS, 0.5)
    if rnd.random() < 0.2:
        env["UID"] = _pick(rnd, ["65534", "1"], BAD_NUMBERS, 0.5)
    if rnd.random() < 0.2:
        env["GID"] = _pick(rnd, ["65534", "1"], BAD_NUMBERS, 0.5)
    return {"argv": argv, "env": env}


def _dns_handler(query: Query) -> List[tuple]:
    """ok.example has 127.0.0.1; every other name does not exist."""
    if query.name == b"\x02ok\x07example\x00" and query.qtype == 1:
        return [(0, response(query, [rr(b"\xc0\x0c", 1, socket.inet_aton("127.0.0.1"))]))]
    return [(0, response(query, rcode=3))]


@pytest.mark.slow
def test_500_random_command_lines_never_trace_back(tmp_path) -> None:
    folder = str(tmp_path)
    for name, text in (("good", "3\n"), ("zero", "0\n"), ("huge", HUGE + "\n"),
                       ("words", "many\n")):
        with open(os.path.join(folder, name), "w") as handle:
            handle.write(text)
    rnd = random.Random(SEED)
    cases = [_command_line(rnd, folder) for _ in range(500)]
    assert len({json.dumps(c) for c in cases}) > 450              # varied enough
    with fake_dns_on_53(_dns_handler) as dns:
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DNSCACHEIP": dns.ip,
                "DNSREWRITEFILE": NO_REWRITE, "CONTROLDIR": folder}
        for case in cases:
            case["env"] = {**base, **case["env"]}            # type: ignore[dict-item]
        proc = subprocess.run([PYTHON, STARTUPS], input=json.dumps(cases).encode(),
                              capture_output=True, timeout=120, cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    results = json.loads(proc.stdout)
    assert len(results) == len(cases)
    codes: Dict[int, int] = {}
    for case, result in zip(cases, results):
        shown = f"{case['argv']!r:.300} {case['env']!r:.300}: {result!r:.2000}"
        assert not result["hung"], shown
        assert "Traceback" not in result["stderr"], shown
        assert result["code"] in (0, 100, 111), shown
        for line in result["stderr"].splitlines():
            assert line.startswith("tcpserver: ") or line.startswith(TLS_LINES), shown
            assert len(line) < 600, shown
        codes[result["code"]] = codes.get(result["code"], 0) + 1
    # the mix covers all three outcomes: started, usage errors, fatal errors
    assert all(codes.get(code, 0) >= 50 for code in (0, 100, 111)), codes


# -- the fuzz of rules inputs ---------------------------------------------------------------
RULE_PARTS = ["1.2.3.4", "1.2.3.", "1.2.3.1-" + HUGE, HUGE + "-3", "1.2.3.0/" + HUGE,
              "10.0.0.0/8", "::1", "::/" + HUGE, "fe80::1%" + HUGE, "=host", "joe@1.2.3.4",
              "", "1.2.3.250-300", "1.2.3.-", "-", "1-2-3", "/", "1.2.3.4/", "\xff\xfe", HUGE]
RULE_TAILS = [":allow", ":deny", ":allow,MAXPERIP=\"" + HUGE + "\"", ":allow,X=", ":allow,!",
              ":allow,!A", ":deny,X=\"1\"", "", ":", ":allowed", ":allow\r", ":allow,X=\"a\"\r"]


def test_500_random_rules_lines_raise_only_parse_errors() -> None:
    rnd = random.Random(SEED)
    outcomes = {"records": 0, "syntax": 0, "colon": 0}
    for _ in range(500):
        line = (rnd.choice(RULE_PARTS) + rnd.choice(RULE_TAILS)).encode("latin-1")
        if rnd.random() < 0.2:
            cut = rnd.randrange(len(line) + 1)
            line = line[:cut] + bytes([rnd.randrange(256)]) + line[cut:]
        try:
            records = parse_line(line + b"\n")
        except RuleSyntaxError:
            outcomes["syntax"] += 1
        except NoColonError:
            outcomes["colon"] += 1
        else:
            outcomes["records"] += 1
            for _key, value in records:
                apply(value)                        # reading a value back never raises
    assert all(outcomes.values()), outcomes

