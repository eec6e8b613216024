"""tcprulescheck: show which rule tcpserver would apply to a client.

Usage: ``tcprulescheck rules.cdb``, with the client described by the
environment: ``$TCPREMOTEIP`` (default ``0.0.0.0``), ``$TCPREMOTEHOST``
and ``$TCPREMOTEINFO`` (each used when present, even if empty).  The
lookup is exactly the one of ``tcpserver -x`` (:mod:`ucspi.rules.lookup`).

Output: ``rule KEY:`` (a CIDR rule as its block, ``10.0.0.0/8``, not
as its stored bit-string key) then one line per entry (``set environment
variable NAME=VALUE``, ``unset environment variable NAME``, ``deny
connection`` which ends the list) and ``allow connection``; or, with no
matching rule, ``default:`` and ``allow connection``.  Exit 0 in both
cases, 100 without an argument, 111 if the cdb cannot be read.
``--help`` and ``--version`` answer on standard output.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Tuple

from . import answered
from ..cdb.read import CdbError
from ..errors import EXIT_TEMP, EXIT_USAGE, errtext
from ..log import say, write_all
from ..rules.lookup import entries, find
from ..rules.parse import cidr_text

USAGE = b"tcprulescheck: usage: tcprulescheck rules.cdb"
#: ``--help``: the usage line, then the argument and the environment
HELP = USAGE + b"""

Shows the rule of rules.cdb that tcpserver -x would apply to the client
described by the environment.
Arguments and environment:
  rules.cdb      the rules database (made by tcprules)
  TCPREMOTEIP    the client's address (default 0.0.0.0)
  TCPREMOTEHOST  its host name (used when set, even if empty)
  TCPREMOTEINFO  its ident answer (used when set, even if empty)
  --help         this text
  --version      the version
Exit: 0, 100 without an argument, 111 if rules.cdb cannot be read.
More: man tcprulescheck."""


def report(found: Optional[Tuple[bytes, bytes]]) -> bytes:
    """The text tcprulescheck prints for a lookup result.

    Args:
        found: ``(key, value)`` from :func:`ucspi.rules.lookup.find`, or None.

    Returns:
        The whole output.
    """
    if found is None:
        return b"default:\nallow connection\n"
    key, value = found
    out = [b"rule " + (cidr_text(key) or key) + b":\n"]
    for entry in entries(value):
        kind = entry[:1]
        if kind == b"D":
            out.append(b"deny connection\n")
            return b"".join(out)
        if kind == b"+":
            out.append(b"set environment variable " + entry[1:] + b"\n")
        elif kind == b"-":
            out.append(b"unset environment variable " + entry[1:] + b"\n")
    out.append(b"allow connection\n")
    return b"".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    """Run tcprulescheck.

    Args:
        argv: the arguments after the program name (default
            ``sys.argv[1:]``).

    Returns:
        The exit code: 0, 100 or 111.
    """
    args = sys.argv[1:] if argv is None else argv
    if answered(args, "tcprulescheck", HELP):
        return 0
    try:
        if not args:
            say(USAGE)
            return EXIT_USAGE
        env = os.environb
        ip = os.fsdecode(env.get(b"TCPREMOTEIP", b"0.0.0.0"))
        try:
            found = find(args[0], ip, env.get(b"TCPREMOTEHOST"),
                         env.get(b"TCPREMOTEINFO"))
        except (OSError, CdbError, MemoryError) as e:
            say(b"tcprulescheck: fatal: unable to read " +
                 os.fsencode(args[0]) + b": " + errtext(e).encode())
            return EXIT_TEMP
        write_all(1, report(found))
    except OSError:
        return EXIT_TEMP
    except KeyboardInterrupt:
        return EXIT_TEMP
    return 0


if __name__ == "__main__":
    sys.exit(main())
