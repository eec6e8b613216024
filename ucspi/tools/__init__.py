"""The commands beside the server: ``tcprules``, ``tcprulescheck`` and
``rblsmtpd``."""

from __future__ import annotations

from typing import List

from .. import version_line
from ..log import say


def answered(args: List[str], command: str, text: bytes) -> bool:
    """Answer ``--help`` (``text``: the usage line and a summary) or
    ``--version`` (one line) on standard output when it is the first
    argument; True if answered (the command then exits 0)."""
    if args[:1] == ["--help"]:
        say(text, 1)
        return True
    if args[:1] == ["--version"]:
        say(version_line(command).encode(), 1)
        return True
    return False
