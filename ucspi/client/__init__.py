"""tcpclient: connect to a TCP server and run a program with the
connection on descriptors 6 and 7 (djb's ucspi-tcp 0.88, with
IndiMail's IPv6, client mode and TLS; design: tcpclient).

* :mod:`.options` is pure: the command line.
* :mod:`.connect`: the server's addresses and port, and the connection
  attempts with ``-T x+y``.
* :mod:`.describe`: what the program learns about the connection (the
  addresses, the names, the ident answer) as environment changes.
* :mod:`.starttls` is pure: the SMTP, POP3 and IMAP dialogues that come
  before a STARTTLS handshake.
* :mod:`.secure`: TLS, the handshake and the relay in front of the
  program or of standard input and output.
* :mod:`.command`: the straight line from the command line to ``exec``.

Importing this package loads nothing else: :func:`main` imports the
command when it is called, so that ``python3 -m ucspi`` under another
name does not pay for it.
"""

from __future__ import annotations

from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """The tcpclient command (:func:`.command.main`)."""
    from .command import main as run
    return run(argv)


__all__ = ["main"]
