"""tcprules and tcprulescheck commands: messages, exit codes, safety of
the old cdb, and differential runs against Debian's ucspi-tcp."""

from __future__ import annotations

import os
import subprocess
from typing import Dict, List, Optional

import pytest

from tests.fix_rules import (OUR_TCPRULESCHECK, Result, c_check, c_rules,
                             ours_check, ours_rules, tinycdb_dump)
from tests.util import C_TCPRULES, PYTHON, ROOT, need

DENY = b"1.2.3.4:deny\n"


def no_traceback(res: Result) -> Result:
    assert b"Traceback" not in res.err, res.err
    return res


def setup_old(tmp_path) -> bytes:
    """A good test.cdb to be left alone by failing runs."""
    res = ours_rules(str(tmp_path), b"9.9.9.9:allow,OLD=/yes/\n")
    assert res.code == 0 and res.cdb is not None
    return res.cdb


# ------------------------------------------------------------------ tcprules

@pytest.mark.parametrize("args", [[], ["test.cdb"]])
def test_usage(tmp_path, args):
    for run in (ours_rules, c_rules):
        res = no_traceback(run(str(tmp_path), DENY, args))
        assert (res.code, res.err) == \
            (100, b"tcprules: usage: tcprules rules.cdb rules.tmp\n")


@pytest.mark.parametrize("tmp", ["/dev/nonexistent/tmp", "/proc/version/tmp",
                                 "/sys/ucspi-test.tmp"])
def test_unable_to_create(tmp_path, tmp):
    old = setup_old(tmp_path)
    prefix = b"tcprules: fatal: unable to create " + tmp.encode() + b": "
    ours = no_traceback(ours_rules(str(tmp_path), DENY, ["test.cdb", tmp]))
    theirs = c_rules(str(tmp_path), DENY, ["test.cdb", tmp])
    assert (ours.code, ours.err) == (theirs.code, theirs.err)
    assert ours.code == 111 and ours.err.startswith(prefix)
    if tmp.startswith("/dev/nonexistent"):
        assert ours.err == prefix + b"file does not exist\n"
    assert ours.cdb == old


def test_unable_to_move(tmp_path):
    for run in (ours_rules, c_rules):
        res = no_traceback(run(str(tmp_path), DENY,
                               ["/dev/nonexistent/cdb", "test.tmp"]))
        assert (res.code, res.err) == (111, b"tcprules: fatal: unable to "
                                       b"move test.tmp to /dev/nonexistent/"
                                       b"cdb: file does not exist\n")


def test_cross_device_move_keeps_old_cdb(tmp_path):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or \
            os.stat(shm).st_dev == os.stat(str(tmp_path)).st_dev:
        pytest.skip("no second file system for the temp file")
    old = setup_old(tmp_path)
    tmp = os.path.join(shm, "ucspi-test-%d.tmp" % os.getpid())
    try:
        res = no_traceback(ours_rules(str(tmp_path), DENY, ["test.cdb", tmp]))
        assert res.code == 111
        assert res.err == ("tcprules: fatal: unable to move %s to test.cdb: "
                           "cross-device link\n" % tmp).encode()
        assert res.cdb == old
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def test_write_error(tmp_path):
    old = setup_old(tmp_path)
    for run in (ours_rules, c_rules):
        res = no_traceback(run(str(tmp_path), DENY, ["test.cdb", "/dev/full"]))
        assert (res.code, res.err) == (111, b"tcprules: fatal: unable to "
                                       b"write to /dev/full: out of disk "
                                       b"space\n")
        assert res.cdb == old


def run_main_with_stdin_fd(module: str, args: List[str], setup: str,
                           cwd: str) -> "subprocess.CompletedProcess[bytes]":
    """Call ``module.main(args)`` after ``setup`` has rearranged fd 0
    (Python itself refuses to start with some kinds of stdin)."""
    code = ("import os, sys; %s; sys.path.insert(0, %r); "
            "from %s import main; raise SystemExit(main(%r))"
            % (setup, ROOT, module, args))
    return subprocess.run([PYTHON, "-c", code], capture_output=True, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def test_read_error(tmp_path):
    old = setup_old(tmp_path)
    proc = run_main_with_stdin_fd(
        "ucspi.tools.tcprules", ["test.cdb", "test.tmp"],
        "os.dup2(os.open('.', os.O_RDONLY), 0)", str(tmp_path))
    assert proc.returncode == 111
    assert proc.stderr == b"tcprules: fatal: unable to read input: " \
        b"is a directory\n"
    fd = os.open(str(tmp_path), os.O_RDONLY)
    try:
        proc = subprocess.run([need(C_TCPRULES), "test.cdb", "test.tmp"],
                              stdin=fd, capture_output=True,
                              cwd=str(tmp_path))
    finally:
        os.close(fd)
    assert proc.returncode == 111
    assert proc.stderr == b"tcprules: fatal: unable to read input: " \
        b"is a directory\n"
    with open(str(tmp_path / "test.cdb"), "rb") as f:
        assert f.read() == old


@pytest.mark.parametrize("text,line", [
    (b"1.2.3.4:foo\n", b"1.2.3.4:foo"),
    (b"ok:allow\n1.2.3.4:allowed  \t\n", b"1.2.3.4:allowed"),
    (b"1.2.3.4:deny junk\n", b"1.2.3.4:deny junk"),
    (b"1.2.3.4:allow,X\n", b"1.2.3.4:allow,X"),
    (b"1.2.3.4:allow,X=\n", b"1.2.3.4:allow,X="),
    (b"1.2.3.4:allow,X=\"abc\n", b"1.2.3.4:allow,X=\"abc"),
    (b"1.2.3.4:allow,X=\"a\"b\n", b"1.2.3.4:allow,X=\"a\"b"),
    (b"1.2.3.a-4:allow\n", b"1.2.3.a-4:allow"),
])
def test_parse_error_same_as_c(tmp_path, text, line):
    old = setup_old(tmp_path)
    for run in (ours_rules, c_rules):
        res = no_traceback(run(str(tmp_path), text))
        assert (res.code, res.err) == \
            (100, b"tcprules: fatal: unable to parse this line: " + line +
             b"\n")
        assert res.cdb == old
        assert os.path.exists(str(tmp_path / "test.tmp"))  # left behind


@pytest.mark.parametrize("text,line", [
    (b"1.2.3.4:allow,A,B=\"x\"\n", b"1.2.3.4:allow,A,B=\"x\""),
    (b"1.2.3.4:allow,!\n", b"1.2.3.4:allow,!"),
    (b"10.0.:allow,!RELAYCLIENT=\n", b"10.0.:allow,!RELAYCLIENT="),
    (b"fe80::1-3:allow\n", b"fe80::1-3:allow"),
    (b"10.0.0.0/33:deny\n", b"10.0.0.0/33:deny"),
    (b"2001:zz::/32:deny\n", b"2001:zz::/32:deny"),
])
def test_parse_error_indimail_syntax(tmp_path, text, line):
    old = setup_old(tmp_path)
    res = no_traceback(ours_rules(str(tmp_path), text))
    assert (res.code, res.err) == \
        (100, b"tcprules: fatal: unable to parse this line: " + line + b"\n")
    assert res.cdb == old


def test_no_colon_line(tmp_path):
    # issue 7, defect 10: 100 like every parse error (IndiMail: 111,
    # "try again", which a retry loop would retry for ever)
    old = setup_old(tmp_path)
    res = no_traceback(ours_rules(str(tmp_path), b"ok:allow\nfoo bar\n"))
    assert (res.code, res.err) == \
        (100, b"tcprules: fatal: Unable to find colon on non-empty line.\n")
    assert res.cdb == old


@pytest.mark.parametrize("text, number", [
    (b"1.2.3.4:allow\r\n", 1),
    (b"# rules\r\n\n1.2.3.4:allow\n5.6.7.8:deny,X=\"y\"\r\n", 4),   # a comment may end in CR
    (b"ok:allow\n1.2.3.4:allow\r", 2),                                # no LF at the end
    (b"ok:allow\nno colon\r\n", 2),
])
def test_carriage_return_says_so(tmp_path, text, number):
    """Issue 7, defect 10: a DOS line end is named, with the line's
    number, instead of showing a line that looks valid (djb's tcprules
    prints ``unable to parse this line: 1.2.3.4:allow^M``)."""
    old = setup_old(tmp_path)
    res = no_traceback(ours_rules(str(tmp_path), text))
    assert (res.code, res.err) == \
        (100, b"tcprules: fatal: carriage return at end of line %d\n" % number)
    assert res.cdb == old


def test_carriage_return_inside_a_value_is_kept(tmp_path):
    cdb = build(tmp_path, b"1.2.3.4:allow,X=\"a\rb\"\n")
    res = ours_check(cdb, client("1.2.3.4"))
    assert res.out == b"rule 1.2.3.4:\nset environment variable X=a\rb\nallow connection\n"


def test_blank_lines_are_skipped(tmp_path):
    res = ours_rules(str(tmp_path), b"  \t\n\n1.2.3.4:deny\n   \n")
    assert res.code == 0 and res.err == b""
    assert tinycdb_dump(str(tmp_path / "test.cdb")) == \
        b"+7,2:1.2.3.4->D\0\n\n"


def test_indimail_syntax_compiles(tmp_path):
    text = (b"::1:allow,X=\"1\",!Y\n127.0/8:deny\n2002::/48:deny\n"
            b"joe@::1:allow\n")
    res = ours_rules(str(tmp_path), text)
    assert res.code == 0
    assert tinycdb_dump(str(tmp_path / "test.cdb")) == (
        b"+3,8:::1->+X=1\0-Y\0\n"
        b"+9,2:_0bcdefgh->D\0\n"
        b"+49,2:^00`00000000000a0" + b"0" * 32 + b"->D\0\n"
        b"+7,0:joe@::1->\n\n")


# djb-syntax texts on which our tcprules and Debian's must agree byte for byte
DIFFERENTIAL = {
    "empty": b"",
    "comments-only": b"# nothing\n#\n",
    "allow-deny": b"1.2.3.4:allow\n1.2.3.5:deny\n5.6.:deny\n:allow\n",
    "quotes": (b"1.2.3.4:allow,A=\"x\",B='y',C=/z/,D=+w+,E==v=,F=::,"
               b"G=|a,b:c|,H=\x01bin\x01\n"),
    "empty-values": b"a:deny,X=\"\",=//,Y=\xff\xff\n",
    "ranges": (b"10.2-3.:allow\n1.2.3.250-300:deny\n1.2.3.7-4:allow\n"
               b"1.2.3.-5:allow\n-2:allow\n127.0-1.x.:allow\n"
               b"1.2.3.4-:deny\n1.2.3.18446744073709551615-3:deny\n"),
    "literal-ranges": b"=host-name.example:deny\njoe@1.2.3.4-5:allow\n",
    "hosts": b"=known.edu:allow\n=.abuser.edu:deny\n=:allow\n",
    "info": b"joe@127.0.0.1:allow,which=/first/\njoe@=h.example:deny\n",
    "duplicates": b"1.2.3.4:deny\n1.2.3.4:allow,X=/2/\n1.2.3.4:deny\n",
    "blanks-in-address": b"  1.2.3.4:allow\n1.2.3.4 \t:deny \t \n",
    "trailing": b"1.2.3.4:allow  \n1.2.3.5:deny\t\n1.2.3.6:allow",
    "proper-order": (b"xyz@86.75.30.9:allow,which=/first/\n"
                     b"xyz@=one.two.three:allow,which=/second/\n"),
}


@pytest.mark.parametrize("name", sorted(DIFFERENTIAL))
def test_byte_identical_to_c(tmp_path, name):
    text = DIFFERENTIAL[name]
    ours_dir, c_dir = tmp_path / "ours", tmp_path / "c"
    ours_dir.mkdir()
    c_dir.mkdir()
    ours = no_traceback(ours_rules(str(ours_dir), text))
    theirs = c_rules(str(c_dir), text)
    assert (ours.code, ours.err) == (0, b"") == (theirs.code, theirs.err)
    assert ours.cdb is not None and ours.cdb == theirs.cdb
    if name == "empty":
        assert len(ours.cdb) == 2048


def test_big_random_text_identical_to_c(tmp_path):
    import random
    rng = random.Random(17)
    lines = []
    for i in range(3000):
        addr = ".".join(str(rng.randrange(256)) for _ in range(rng.randrange(
            1, 5)))
        if rng.random() < 0.2:
            addr = "=h%d.example" % rng.randrange(50)
        lines.append("%s:%s,N=\"%d\"" % (addr, rng.choice(["allow", "deny"]),
                                         i))
    text = "\n".join(lines).encode()
    (tmp_path / "o").mkdir()
    (tmp_path / "c").mkdir()
    ours = ours_rules(str(tmp_path / "o"), text)
    theirs = c_rules(str(tmp_path / "c"), text)
    assert ours.code == theirs.code == 0
    assert ours.cdb == theirs.cdb


# ------------------------------------------------------------------ check

def build(tmp_path, text: bytes) -> str:
    res = ours_rules(str(tmp_path), text)
    assert res.code == 0, res.err
    return str(tmp_path / "test.cdb")


def client(ip: Optional[str] = None, host: Optional[str] = None,
           info: Optional[str] = None) -> Dict[str, str]:
    env = {}
    for name, val in (("TCPREMOTEIP", ip), ("TCPREMOTEHOST", host),
                      ("TCPREMOTEINFO", info)):
        if val is not None:
            env[name] = val
    return env


def both(cdb: str, env: Dict[str, str]) -> bytes:
    ours = no_traceback(ours_check(cdb, env))
    theirs = c_check(cdb, env)
    assert (ours.code, ours.out, ours.err) == \
        (theirs.code, theirs.out, theirs.err)
    return ours.out


def test_check_usage():
    for run in (ours_check, c_check):
        res = no_traceback(run("", None, []))
        assert (res.code, res.err) == \
            (100, b"tcprulescheck: usage: tcprulescheck rules.cdb\n")


def test_rts_17_deny(tmp_path):
    cdb = build(tmp_path, DENY)
    assert both(cdb, client("1.2.3.4")) == b"rule 1.2.3.4:\ndeny connection\n"
    assert both(cdb, client("1.2.3.5")) == b"default:\nallow connection\n"


def test_rts_18_variables(tmp_path):
    cdb = build(tmp_path, b"joe@127.0.0.1:allow,which=/first/\n"
                b"18.23.0.32:allow,which=\"second\"\n"
                b"127.:allow,which=+third+\n:allow,which==fourth=\n")
    for ip, info, key, val in [("127.0.0.1", "joe", "joe@127.0.0.1", "first"),
                               ("18.23.0.32", "joe", "18.23.0.32", "second"),
                               ("127.0.0.1", "bill", "127.", "third"),
                               ("10.119.75.39", "bill", "", "fourth")]:
        assert both(cdb, client(ip, None, info)) == (
            "rule %s:\nset environment variable which=%s\nallow connection\n"
            % (key, val)).encode()


def test_rts_19_ranges(tmp_path):
    cdb = build(tmp_path, b"127.0-5.:allow,which=/first/,where=/whatever/\n"
                b"# comment\n")
    for n in range(11):
        out = both(cdb, client("127.%d.0.1" % n))
        if n <= 5:
            assert out == ("rule 127.%d.:\nset environment variable "
                           "which=first\nset environment variable "
                           "where=whatever\nallow connection\n" % n).encode()
        else:
            assert out == b"default:\nallow connection\n"


def test_rts_20_hosts(tmp_path):
    cdb = build(tmp_path, b"=known.edu:allow,which=/known/\n"
                b"=.abuser.edu:deny\n:allow,which=/anybody/\n")
    expect = {"known.edu": b"rule =known.edu:\nset environment variable "
              b"which=known\nallow connection\n",
              "random.edu": b"rule :\nset environment variable "
              b"which=anybody\nallow connection\n",
              "x.abuser.edu": b"rule =.abuser.edu:\ndeny connection\n",
              "x.y.abuser.edu": b"rule =.abuser.edu:\ndeny connection\n"}
    expect["abuser.edu"] = expect["random.edu"]
    for host, out in expect.items():
        assert both(cdb, client("1.2.3.4", host)) == out


PROPER_ORDER = b"""\
xyz@86.75.30.9:allow,which=/first/
xyz@=one.two.three:allow,which=/second/
86.75.30.9:allow,which=/third/
=one.two.three:allow,which=/fourth/
86.75.30.:allow,which=/fifth/
86.75.:allow,which=/sixth/
86.:allow,which=/seventh/
=.two.three:allow,which=/eighth/
=.three:allow,which=/ninth/
=:allow,which=/tenth/
:allow,which=/eleventh/
"""


@pytest.mark.slow
def test_rts_21_proper_order(tmp_path):
    cdb = build(tmp_path, PROPER_ORDER)

    def rule(ip, host=None, info=None) -> bytes:
        return both(cdb, client(ip, host, info)).split(b"\n")[0]

    assert rule("86.75.30.9", "one.two.three", "xyz") == \
        b"rule xyz@86.75.30.9:"
    assert rule("86.75.30.9", None, "xyz") == b"rule xyz@86.75.30.9:"
    assert rule("86.75.30.10", "one.two.three", "xyz") == \
        b"rule xyz@=one.two.three:"
    assert rule("86.75.30.9", "one.two.three", "abc") == b"rule 86.75.30.9:"
    assert rule("86.75.30.10", "one.two.three") == b"rule =one.two.three:"
    assert rule("86.75.30.10", "four.two.three") == b"rule 86.75.30.:"
    assert rule("86.75.20.10", "four.two.three") == b"rule 86.75.:"
    assert rule("86.85.20.10", "four.two.three") == b"rule 86.:"
    assert rule("96.85.20.10", "four.two.three") == b"rule =.two.three:"
    assert rule("96.85.20.10", "four.three") == b"rule =.three:"
    assert rule("96.85.20.10", "four") == b"rule =:"
    assert rule("96.85.20.10") == b"rule :"
    # and every other combination, against the C tool (both() compares)
    count = 12
    hits: Dict[bytes, int] = {}
    for ip in ("86.75.30.9", "86.75.30.10", "86.75.20.10", "86.85.20.10",
               "96.85.20.10"):
        for host in (None, "one.two.three", "four.two.three", "four.three",
                     "four", ""):
            for info in (None, "xyz", "abc", ""):
                first = rule(ip, host, info)
                hits[first] = hits.get(first, 0) + 1
                count += 1
    assert count == 12 + 5 * 6 * 4          # every combination was checked
    assert hits == {                        # and each of the 11 rules is someone's
        b"rule xyz@86.75.30.9:": 6, b"rule xyz@=one.two.three:": 4,
        b"rule 86.75.30.9:": 18, b"rule =one.two.three:": 12, b"rule 86.75.30.:": 16,
        b"rule 86.75.:": 16, b"rule 86.:": 16, b"rule =.two.three:": 4,
        b"rule =.three:": 4, b"rule =:": 20, b"rule :": 4}


@pytest.mark.parametrize("content,err", [
    (None, b"file does not exist"),
    (b"", b"invalid argument"),
    (b"\x01" * 100, b"protocol error"),     # (a text gets a hint: tests/test_hardening2.py)
    (b"\xff" * 4000, b"protocol error"),
])
def test_check_unreadable_same_as_c(tmp_path, content, err):
    path = str(tmp_path / "r.cdb")
    if content is not None:
        with open(path, "wb") as f:
            f.write(content)
    for run in (ours_check, c_check):
        res = no_traceback(run(path, client("1.2.3.4")))
        assert (res.code, res.out) == (111, b"")
        assert res.err == b"tcprulescheck: fatal: unable to read " + \
            path.encode() + b": " + err + b"\n"


def test_check_directory_is_an_error(tmp_path):
    res = no_traceback(ours_check(str(tmp_path), client("1.2.3.4")))
    assert (res.code, res.err) == (111, b"tcprulescheck: fatal: unable to "
                                   b"read " + str(tmp_path).encode() +
                                   b": is a directory\n")


def test_check_indimail_entries_and_defaults(tmp_path):
    cdb = build(tmp_path, b"1.2.3.4:allow,!A,B=\"x\"\n0.0.0.0/8:deny,X=/y/\n"
                b"::1:allow,Z=/v6/\n")
    res = ours_check(cdb, client("1.2.3.4"))
    assert res.out == (b"rule 1.2.3.4:\nunset environment variable A\n"
                       b"set environment variable B=x\nallow connection\n")
    res = no_traceback(ours_check(cdb, {}))  # no $TCPREMOTEIP: no crash
    assert (res.code, res.out) == (0, b"rule 0.0.0.0/8:\ndeny connection\n")
    res = ours_check(cdb, client("0:0::1"))
    assert res.out == (b"rule ::1:\nset environment variable Z=v6\n"
                       b"allow connection\n")


def test_check_closed_stdout_no_traceback(tmp_path):
    cdb = build(tmp_path, DENY)
    proc = subprocess.Popen(OUR_TCPRULESCHECK + [cdb], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={"TCPREMOTEIP": "1.2.3.4"})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=30)
    assert b"Traceback" not in err


def test_tcprules_closed_stdin(tmp_path):
    proc = run_main_with_stdin_fd("ucspi.tools.tcprules", ["t.cdb", "t.tmp"],
                                  "os.close(0)", str(tmp_path))
    assert proc.returncode == 111
    assert proc.stderr == b"tcprules: fatal: unable to read input: " \
        b"file descriptor not open\n"
    assert not os.path.exists(str(tmp_path / "t.cdb"))


@pytest.mark.parametrize("rule, ip, shown", [
    (b"10.0.0.0/8", "10.1.2.3", b"10.0.0.0/8"),
    (b"10.9.9.9/8", "10.1.2.3", b"10.0.0.0/8"),             # stored as the network
    (b"127.0/16", "127.0.5.5", b"127.0.0.0/16"),
    (b"192.168.1.128/25", "192.168.1.200", b"192.168.1.128/25"),
    (b"1.2.3.4/32", "1.2.3.4", b"1.2.3.4/32"),
    (b"2001:db8::/32", "2001:db8::5", b"2001:db8::/32"),
    (b"fe80::/64", "fe80::1", b"fe80::/64"),
    (b"::1/128", "::1", b"::1/128"),
])
def test_check_shows_a_cidr_rule_as_its_block(tmp_path, rule, ip, shown):
    """Issue 7, defect 10: ``rule 10.0.0.0/8:``, not the stored key
    ``rule _0000e0g0:``."""
    cdb = build(tmp_path, rule + b":allow,NET=\"yes\"\n")
    res = no_traceback(ours_check(cdb, client(ip)))
    assert (res.code, res.out) == (0, b"rule " + shown + b":\nset environment variable "
                                      b"NET=yes\nallow connection\n")


def test_check_shows_other_keys_as_they_are(tmp_path):
    # keys that are not well-formed bit strings (literal rules) stay as they are
    cdb = build(tmp_path, b"_foo:deny\n_0000e0gx:deny\n_0:deny\n^0a:deny\n")
    for ip in ("_foo", "_0000e0gx", "_0", "^0a"):
        res = no_traceback(ours_check(cdb, client(ip)))
        assert res.out == b"rule " + ip.encode() + b":\ndeny connection\n"
