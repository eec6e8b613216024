"""What a command does with its command line before it runs: print
``--help`` or ``--version``, or report a usage error the way djb's
tools do, and give the exit code (tcpserver, tcpclient)."""

from __future__ import annotations

import os
from typing import Callable, List, TypeVar, Union

from .errors import EXIT_USAGE, UsageError
from .log import Log, say
from .options import MissingArgument, OptionError, Request

T = TypeVar("T")


def read_command_line(parse_: Callable[[List[str]], T], args: List[str], log: Log,
                      usage: str) -> Union[T, int]:
    """What ``parse_(args)`` gives, or the exit code of a command line
    that ends here: 0 after ``--help``/``--version`` (printed), 100 after
    a usage error (djb's line and the usage text for a bad letter, the
    usage text alone for a missing argument, a ``fatal:`` line for a bad
    value)."""
    try:
        return parse_(args)
    except Request as req:                 # --help, --version
        say(req.text.rstrip("\n").encode(), 1)
        return 0
    except OptionError as exc:
        log.line(os.fsencode(str(exc)))
        say(usage.encode().rstrip(b"\n"))
    except MissingArgument as exc:
        if not exc.quiet:
            say(usage.encode().rstrip(b"\n"))
    except UsageError as exc:
        log.line(b"fatal: " + os.fsencode(str(exc)))
    return EXIT_USAGE
