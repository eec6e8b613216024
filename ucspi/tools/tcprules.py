"""tcprules: compile a rules text (standard input) into a cdb.

Usage: ``tcprules rules.cdb rules.tmp < rules.txt``

The cdb is written to ``rules.tmp``, synced, and renamed to
``rules.cdb``, so a server reading ``rules.cdb`` sees the old rules or
the new ones, never a mixture.  Both names must be on one file system.
On any error the old ``rules.cdb`` is left as it was (a partial
``rules.tmp`` may remain, as with the C tool).

Messages and exit codes are ucspi-tcp's: 100 for a usage or syntax
error (a non-blank line without any colon too, where IndiMail exits
111; a line ending in a carriage return says so, with its number), 111
for a system error.  ``--help`` and ``--version`` answer on standard
output.  The line syntax is in :mod:`ucspi.rules.parse`.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import BinaryIO, List, Optional

from ..cdb.format import CdbError
from ..cdb.make import CREATE, MOVE, WRITE, CdbWriter, write_atomically
from . import answered
from ..errors import EXIT_TEMP, EXIT_USAGE, errtext
from ..log import say
from ..rules.parse import CarriageReturnError, NoColonError, RuleSyntaxError, parse_line

PROG = b"tcprules: "
FATAL = PROG + b"fatal: "
USAGE = b"tcprules: usage: tcprules rules.cdb rules.tmp"
#: ``--help``: the usage line, then the arguments (see man tcprules)
HELP = USAGE + b"""

Compiles the rules text read on standard input for tcpserver -x.
Arguments:
  rules.cdb  the rules database to make; replaced at once, never half-written
  rules.tmp  the temporary file, renamed to rules.cdb (same file system)
  --help     this text
  --version  the version
Exit: 0, 100 for a usage or syntax error, 111 for a system error.
More: man tcprules."""


class _Exit(Exception):
    """Leave main with a message on stderr and an exit code."""

    def __init__(self, code: int, message: bytes) -> None:
        super().__init__(code)
        self.code = code
        self.message = message


def _sys(what: bytes, err: BaseException) -> _Exit:
    return _Exit(EXIT_TEMP, FATAL + what + b": " + errtext(err).encode())


def _compile(source: BinaryIO, writer: CdbWriter, tmp: bytes) -> None:
    """Read every line of ``source`` and add its records."""
    number = 0
    while True:
        try:
            line = source.readline()
        except OSError as e:
            raise _sys(b"unable to read input", e) from None
        if not line:
            return
        number += 1
        try:
            records = parse_line(line)
        except CarriageReturnError:
            raise _Exit(EXIT_USAGE,
                        FATAL + b"carriage return at end of line %d" % number) \
                from None
        except RuleSyntaxError as e:
            raise _Exit(EXIT_USAGE,
                        FATAL + b"unable to parse this line: " + e.line) \
                from None
        except NoColonError as e:
            raise _Exit(EXIT_USAGE, FATAL + str(e).encode()) from None
        try:
            for key, value in records:
                writer.add(key, value)
        except (OSError, CdbError) as e:
            raise _sys(b"unable to write to " + tmp, e) from None


def _fill(source: BinaryIO, tmp: bytes, fd: int) -> None:
    """Compile ``source`` into the cdb open on ``fd``."""
    writer = CdbWriter(fd)
    _compile(source, writer, tmp)
    try:
        writer.finish()
    except (OSError, CdbError) as e:
        raise _sys(b"unable to write to " + tmp, e) from None


def run(cdb: str, tmp: str, source: BinaryIO) -> None:
    """Compile ``source`` into ``tmp``, then rename it to ``cdb``.

    Args:
        cdb: the rules cdb to replace.
        tmp: the temporary file, on the same file system.
        source: the rules text, read line by line.

    Raises:
        _Exit: with the message and exit code of the failure.
    """
    tmpb, cdbb = os.fsencode(tmp), os.fsencode(cdb)
    steps = {CREATE: b"unable to create " + tmpb,
             WRITE: b"unable to write to " + tmpb,
             MOVE: b"unable to move " + tmpb + b" to " + cdbb}
    write_atomically(cdb, tmp, functools.partial(_fill, source, tmpb), keep_tmp=True,
                     failed=lambda step, e: _sys(steps[step], e))


def _stdin() -> BinaryIO:
    try:
        return os.fdopen(0, "rb", closefd=False)
    except OSError as e:
        raise _sys(b"unable to read input", e) from None


def main(argv: Optional[List[str]] = None) -> int:
    """Run tcprules.

    Args:
        argv: the arguments after the program name (default
            ``sys.argv[1:]``).

    Returns:
        The exit code: 0, 100 or 111.
    """
    args = sys.argv[1:] if argv is None else argv
    if answered(args, "tcprules", HELP):
        return 0
    if len(args) < 2:
        say(USAGE)
        return EXIT_USAGE
    try:
        run(args[0], args[1], _stdin())
    except _Exit as e:
        say(e.message)
        return e.code
    except MemoryError:
        say(FATAL + b"out of memory")
        return EXIT_TEMP
    except KeyboardInterrupt:
        return EXIT_TEMP
    return 0


if __name__ == "__main__":
    sys.exit(main())
