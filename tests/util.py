"""Small helpers shared by the tests.

``need(...)`` skips a test when an outside tool is missing, but fails it
when ``UCSPI_REQUIRE_ALL=1`` (CI sets that, so a missing install step
cannot hide behind a skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import List, NoReturn

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCPSERVER = os.path.join(ROOT, "tcpserver.py")
PYTHON = sys.executable
# Debian's C tools, always by full path: never run a bare "tcpserver".
C_TCPSERVER = "/usr/bin/tcpserver"
C_TCPRULES = "/usr/bin/tcprules"
C_TCPRULESCHECK = "/usr/bin/tcprulescheck"


def require_all() -> bool:
    return os.environ.get("UCSPI_REQUIRE_ALL") == "1"


def missing(what: str) -> NoReturn:
    """Skip (or, under UCSPI_REQUIRE_ALL=1, fail) for lack of ``what``."""
    if require_all():
        pytest.fail(f"required for this test but missing: {what}")
    pytest.skip(f"missing: {what}")


def need(path_or_name: str) -> str:
    """Return the full path of a program, or skip/fail if it is missing."""
    if os.path.isabs(path_or_name):
        if os.access(path_or_name, os.X_OK):
            return path_or_name
    else:
        found = shutil.which(path_or_name)
        if found:
            return found
    missing(path_or_name)


def need_root() -> None:
    if os.geteuid() != 0:
        missing("root privileges")


def ours(*args: str) -> List[str]:
    """argv that runs our tcpserver with the current interpreter."""
    return [PYTHON, TCPSERVER, *args]


def stop(proc: "subprocess.Popen[bytes]") -> None:
    """End a process the test started: SIGTERM, then SIGKILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
