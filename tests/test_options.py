"""tcpserver's command line, end to end: exit codes and messages.

Usage errors exit 100 (design: options, exit-codes); the option parser's
own errors are printed even under ``-q`` (parsing has not finished), a
missing host/port/program is silenced by ``-q``.  Letters of features
that have not landed are refused with one line and exit 100.  The C
server is run beside ours where the texts are shared.
"""

from __future__ import annotations
from typing import List

import pytest

from tests.fix_server import C, OURS, PRINT_ENV, parse_env, run_once
from ucspi.options import USAGE, parse

PROG = ["127.0.0.1", "0", "true"]
C_USAGE = ("tcpserver: usage: tcpserver [ -1UXpPhHrRoOdDqQv ] [ -c limit ] [ -x rules.cdb ] "
           "[ -B banner ] [ -g gid ] [ -u uid ] [ -b backlog ] [ -l localname ] "
           "[ -t timeout ] host port program\n")


def _err(result) -> str:  # type: ignore[no-untyped-def]
    text = result.stderr.decode("latin-1")
    assert "Traceback" not in text, text
    return text


@pytest.mark.parametrize("argv", [[], ["0"], ["0", "0"], ["-v", "0", "0"], ["-HR", "-l0"]])
def test_missing_arguments_print_usage(argv: List[str]) -> None:
    result = run_once(OURS, argv)
    assert (result.returncode, _err(result), result.stdout) == (100, USAGE, b"")


def test_missing_arguments_c_server() -> None:
    result = run_once(C, ["0", "0"])
    assert (result.returncode, result.stderr.decode()) == (100, C_USAGE)


@pytest.mark.parametrize("impl", [OURS, C])
@pytest.mark.parametrize("argv", [["-q", "0", "0"], ["-q"], ["-vq", "0"]])
def test_missing_arguments_quiet(impl: str, argv: List[str]) -> None:
    result = run_once(impl, argv)
    assert (result.returncode, result.stderr, result.stdout) == (100, b"", b"")


@pytest.mark.parametrize("argv, first", [
    (["-k", *PROG], "tcpserver: illegal option -- k"),
    (["-vk", *PROG], "tcpserver: illegal option -- k"),
    (["-q", "-k", *PROG], "tcpserver: illegal option -- k"),   # printed despite -q
    (["-v", "-c"], "tcpserver: option requires an argument -- c"),
    (["-q", "-l"], "tcpserver: option requires an argument -- l"),
])
def test_option_parser_errors(argv: List[str], first: str) -> None:
    ours_result = run_once(OURS, argv)
    assert ours_result.returncode == 100
    assert _err(ours_result) == first + "\n" + USAGE
    c_result = run_once(C, argv)
    assert c_result.returncode == 100
    assert c_result.stderr.decode() == first + "\n" + C_USAGE


@pytest.mark.parametrize("argv", [
    ["-c", "4x"], ["-c", "0"], ["-c", ""], ["-C", "-1"], ["-C", "x"], ["-b", "x"],
    ["-b", "-1"], ["-t", "5x"], ["-c4x"], ["-vc", "0"], ["-S", "5s"], ["-T", "-1"],
    ["-s", "-S", ""],
])
def test_numbers_are_checked(argv: List[str]) -> None:
    result = run_once(OURS, [*argv, *PROG])
    err = _err(result)
    assert result.returncode == 100
    assert err.count("\n") == 1 and err.startswith("tcpserver: fatal: -"), err
    assert "wants a number" in err


def test_a_path_host_takes_no_port() -> None:
    """``/path prog``: UNIX mode, the word after the path is the program
    (as in IndiMail); the options it ignores are turned off."""
    opts = parse(["-1", "-x", "r.cdb", "-hpr", "-D", "-6", "/tmp/x.sock", "0", "prog"], {})
    assert opts.unix and opts.host == "/tmp/x.sock" and opts.argv == ["0", "prog"]
    assert not (opts.print_port or opts.rules or opts.remote_host or opts.paranoid
                or opts.remote_info or opts.nodelay or opts.force_ipv6)


def test_a_path_host_wants_a_program() -> None:
    result = run_once(OURS, ["-HR", "/tmp/ucspi-no-such.sock"])
    assert result.returncode == 100
    assert result.stderr.decode().startswith("tcpserver: usage: ")


def test_double_dash_ends_options(servers) -> None:
    server = servers(["-HR", "-l", "x", "--"])
    env = server.env()
    assert env["TCPLOCALHOST"] == "x"


def test_clustered_and_attached_arguments(servers) -> None:
    server = servers(["-vHRt5", "-lname", "-c3", "-Bbanner"], prog=PRINT_ENV)
    data = server.talk()
    assert data.startswith(b"banner")
    env = parse_env(data[len(b"banner"):])
    assert env["TCPLOCALHOST"] == "name" and "TCPREMOTEHOST" not in env
    server.wait_log(r"^tcpserver: status: 0/3$")


def test_no_permutation(servers) -> None:
    # "-v" after the program is an argument of the program
    server = servers(["-HR", "-l0"], prog=["echo", "-q", "-v"])
    assert server.talk() == b"-q -v\n"
    assert server.log() == ""              # not verbose: -v went to echo


def test_V_accepted(servers) -> None:
    server = servers(["-V", "-HR", "-l0"], prog=["true"])
    server.talk()
    server.wait_log(r"^tcpserver: status: 0/40$", 2)
