"""Issue 7, the command-line defects: huge numbers (4), and a seeded
fuzz of rules inputs.  Defect 5 is in tests/test_privs.py.

Every bad input gets one line in the house style and exit 100 (usage,
parse error) or 111 (temporary), never a traceback.
"""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

from tests.fix_rules import OUR_TCPRULES, OUR_TCPRULESCHECK
from tests.fix_server import OURS, clean_env, run_once
from ucspi import scan
from ucspi.options import MAX_NUMBER, parse
from ucspi.rules.lookup import apply
from ucspi.rules.parse import NoColonError, RuleSyntaxError, parse_line

HUGE = "9" * 5000
PROG = ["127.0.0.1", "0", "true"]
NOLOOKUP = ["-HR", "-l0"]


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


SEED = 20261129


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

