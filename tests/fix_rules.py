"""Helpers for the cdb / rules / tcprules tests: run our commands and
Debian's C ones on the same input and collect what they produce."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple
from tests.util import C_TCPRULES, C_TCPRULESCHECK, PYTHON, ROOT, need

OUR_TCPRULES = [PYTHON, os.path.join(ROOT, "tcprules.py")]
OUR_TCPRULESCHECK = [PYTHON, os.path.join(ROOT, "tcprulescheck.py")]
TINYCDB = "/usr/bin/cdb"


@dataclass
class Result:
    """Exit code, outputs and (for tcprules) the cdb bytes made."""

    code: int
    out: bytes
    err: bytes
    cdb: Optional[bytes] = None


def _env(extra: Optional[Dict[str, str]]) -> Dict[str, str]:
    env = {"PATH": "/usr/bin:/bin"}
    env.update(extra or {})
    return env


def tcprules(argv0: List[str], workdir: str, text: bytes,
             args: Optional[List[str]] = None) -> Result:
    """Run a tcprules (ours or C) in ``workdir`` with ``text`` on stdin.

    Args:
        argv0: the command (``OUR_TCPRULES`` or ``[C_TCPRULES]``).
        workdir: where ``test.cdb`` / ``test.tmp`` go.
        text: the rules text.
        args: the arguments (default ``test.cdb test.tmp``).

    Returns:
        The result, with the bytes of ``test.cdb`` if it exists.
    """
    if args is None:
        args = ["test.cdb", "test.tmp"]
    proc = subprocess.run(argv0 + args, input=text, cwd=workdir,
                          capture_output=True, env=_env(None), timeout=60)
    path = os.path.join(workdir, "test.cdb")
    data = None
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
    return Result(proc.returncode, proc.stdout, proc.stderr, data)


def ours_rules(workdir: str, text: bytes,
               args: Optional[List[str]] = None) -> Result:
    return tcprules(OUR_TCPRULES, workdir, text, args)


def c_rules(workdir: str, text: bytes,
            args: Optional[List[str]] = None) -> Result:
    return tcprules([need(C_TCPRULES)], workdir, text, args)


def rulescheck(argv0: List[str], cdb: str,
               env: Optional[Dict[str, str]] = None,
               args: Optional[List[str]] = None) -> Result:
    """Run a tcprulescheck with a client environment."""
    proc = subprocess.run(argv0 + ([cdb] if args is None else args),
                          capture_output=True, env=_env(env), timeout=60,
                          stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ours_check(cdb: str, env: Optional[Dict[str, str]] = None,
               args: Optional[List[str]] = None) -> Result:
    return rulescheck(OUR_TCPRULESCHECK, cdb, env, args)


def c_check(cdb: str, env: Optional[Dict[str, str]] = None,
            args: Optional[List[str]] = None) -> Result:
    return rulescheck([need(C_TCPRULESCHECK)], cdb, env, args)


def tinycdb_dump(path: str) -> bytes:
    """``cdb -d`` output for a file (tinycdb)."""
    proc = subprocess.run([need(TINYCDB), "-d", path], capture_output=True,
                          timeout=60, check=True)
    return proc.stdout


def tinycdb_make(path: str, records: List[Tuple[bytes, bytes]]) -> bytes:
    """Build a cdb with tinycdb's ``cdb -c`` and return its bytes."""
    feed = b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v)
                    for k, v in records) + b"\n"
    subprocess.run([need(TINYCDB), "-c", path], input=feed, check=True,
                   capture_output=True, timeout=60)
    with open(path, "rb") as f:
        return f.read()


def dump_text(records: List[Tuple[bytes, bytes]]) -> bytes:
    """The ``cdb -d`` text for records."""
    return b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v)
                    for k, v in records) + b"\n"
