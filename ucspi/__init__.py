"""ucspi: a pure-Python UCSPI TCP super-server (ucspi-tcp's tcpserver,
with IndiMail's additions), built from the standard library alone.

The package is split into pure modules over bytes (option parsing, IP
text forms, DNS and ident messages, cdb files, rules, log formatting)
and thin I/O drivers on top of them.  The pure modules are what
projects vendoring ``ucspi/`` import.

This file is the first one every command reads (``tcpserver.py``,
``python3 -m ucspi``, the zipapp, the installed scripts), so it checks
the interpreter before anything else (design: help-and-version): on Python older than 3.9
it prints one line, ``<command>: fatal: Python 3.9 or newer is needed
(this is X.Y.Z)``, and exits 111.  It must therefore stay readable by
old interpreters: no annotations, f-strings or other syntax newer than
Python 3.0 here (types go in type comments), and nothing imported from
the package before the check.
"""

import os as _os
import sys as _sys

if False:  # for mypy only: the typing names of the type comments below
    from typing import Any, Optional, Sequence  # noqa: F401

__version__ = "0.1.0"

#: the oldest Python the package runs on
MINIMUM_PYTHON = (3, 9)


#: the commands a program name can stand for (see :func:`command_name`)
COMMANDS = ("tcpserver", "tcprules", "tcprulescheck", "tcp-env", "rblsmtpd", "tcpclient")


def command_name(argv0):
    # type: (str) -> str
    """The command a program name stands for: ``tcpserver``,
    ``tcprules``, ``tcprulescheck``, ``tcp-env``, ``rblsmtpd`` or
    ``tcpclient``, as a whole name, optionally followed by ``.pyz`` or
    ``.py`` (``tcprules``, ``tcprules.pyz``);
    any other name (``tcprules_v2``, ``python3 -m ucspi``'s) is
    ``tcpserver``."""
    name = _os.path.basename(argv0 or "")
    for suffix in (".pyz", ".py"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    return name if name in COMMANDS else "tcpserver"


def version_line(command):
    # type: (str) -> str
    """``<command> <version>``: what ``--version`` prints (design: help-and-version)."""
    return command + " " + __version__


def check_python(version=None, argv0=None):
    # type: (Optional[Sequence[Any]], Optional[str]) -> None
    """Exit 111 with one line if the interpreter is too old.

    Args:
        version: ``sys.version_info`` (tests pass their own).
        argv0: the program name that picks the command in the message
            (default ``sys.argv[0]``).
    """
    if version is None:
        version = _sys.version_info
    if tuple(version[:2]) >= MINIMUM_PYTHON:
        return
    if argv0 is None:
        argv0 = _sys.argv[0] if _sys.argv else ""
    line = "%s: fatal: Python %d.%d or newer is needed (this is %d.%d.%d)\n" % (
        (command_name(argv0),) + MINIMUM_PYTHON + tuple(version[:3]))
    try:
        _os.write(2, line.encode("ascii"))
    except OSError:
        pass
    raise SystemExit(111)


check_python()
