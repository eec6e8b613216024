"""Typos are warned about at start-up (issue 7, item 7): one line each,
and the server still starts and serves, as the C one does."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.fix_server import OURS, clean_env, run_once
from tests.util import PYTHON, ROOT

ECHO = ["sh", "-c", "echo hi"]


def warnings(server) -> list:
    return [line for line in server.lines() if "warning" in line]


def test_a_good_command_line_warns_of_nothing(servers, tmp_path) -> None:
    rules = tmp_path / "rules.cdb"
    subprocess.run([PYTHON, os.path.join(ROOT, "tcprules.py"), str(rules), str(rules) + ".tmp"],
                   input=b":allow\n", check=True)
    server = servers(["-v", "-HRl0", "-x", str(rules)], prog=ECHO, impl=OURS)
    assert server.talk() == b"hi\n"
    assert warnings(server) == []


@pytest.mark.parametrize("prog, message", [
    (["no-such-program-here"], "program not found: no-such-program-here"),
    (["/nonexistent/prog"], "program not found: /nonexistent/prog"),
    (["/etc/passwd"], "program is not executable: /etc/passwd"),
])
def test_program_problems(servers, prog, message) -> None:
    server = servers(["-v", "-HRl0"], prog=prog, impl=OURS)
    assert warnings(server) == [f"tcpserver: warning: {message}"]
    server.talk()                 # still serving: the connection is dropped
    assert server.stop() is not None


def test_program_found_on_path(servers, tmp_path) -> None:
    script = tmp_path / "greet"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    env = clean_env(PATH=f"{tmp_path}:/usr/bin:/bin")
    server = servers(["-v", "-HRl0"], prog=["greet"], impl=OURS, env=env)
    assert warnings(server) == []
    assert server.talk() == b"hello\n"


def test_rules_problems(servers, tmp_path) -> None:
    text = tmp_path / "rules.txt"
    text.write_text("127.0.0.1:allow\n" * 200)
    missing = tmp_path / "missing.cdb"
    server = servers(["-v", "-HRl0", "-x", str(text)], prog=ECHO, impl=OURS)
    assert warnings(server) == [
        f"tcpserver: warning: unable to read rules file {text}: protocol error "
        "(not a cdb: compile it with tcprules)"]
    server = servers(["-v", "-HRl0", "-x", str(missing)], prog=ECHO, impl=OURS)
    assert warnings(server) == [f"tcpserver: warning: rules file does not exist: {missing}"]
    server = servers(["-v", "-HRl0", "-X", "-x", str(missing)], prog=ECHO, impl=OURS)
    assert warnings(server) == []
    assert server.talk() == b"hi\n"
    server = servers(["-v", "-HRl0", "-x", str(tmp_path)], prog=ECHO, impl=OURS)
    assert warnings(server) == [
        f"tcpserver: warning: unable to read rules file {tmp_path}: is a directory"]


def test_env_ids_missing(servers) -> None:
    server = servers(["-v", "-HRl0", "-U"], prog=ECHO, impl=OURS)
    assert warnings(server) == [
        "tcpserver: warning: -U given but neither $UID nor $GID is set: privileges are kept"]
    assert server.talk() == b"hi\n"
    server = servers(["-v", "-HRl0", "-U"], prog=ECHO, impl=OURS,
                     env=clean_env(UID=str(os.getuid())))
    assert warnings(server) == []


def test_limit_file_missing(tmp_path) -> None:
    """Issue 18, item 16: no longer a warning but a usage error
    (tests/test_hardening2.py has the cases)."""
    name = tmp_path / "concurrency"
    result = run_once(OURS, ["-HRl0", "-c", str(name), "127.0.0.1", "0", "true"])
    assert result.returncode == 100
    assert result.stderr.decode().startswith("tcpserver: fatal: -c wants a number from 1 to ")


def test_quiet_means_quiet(servers) -> None:
    server = servers(["-q", "-HRl0", "-U"], prog=["no-such-program-here"], impl=OURS)
    assert server.lines() == []
