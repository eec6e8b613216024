"""A UCSPI-TLS program for the tests of ``-w``: it greets in clear, and
when the client asks for TLS (SMTP ``STARTTLS``, POP3 ``STLS``, IMAP
``STARTTLS``) it says yes in clear, asks tcpserver with ``Y`` (or ``y``)
on ``$SSLCTLFD``, reads the reply up to ``\\0\\0``, moves to
``$SSLREADFD``/``$SSLWRITEFD`` and answers every later command with the
variables it was sent (``;`` between them).

    python3 tests/starttls_prog.py smtp|pop3|imap [Y|y|exit|garbage]

``exit``: leave with status 3 when asked for TLS, without asking;
``garbage``: send ``x`` instead of a command.  On stderr (the server's
log) it writes ``PROGRAM: ...`` lines, for the tests to read.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Iterator

GREETING = {"smtp": "220 starttls.test ESMTP", "pop3": "+OK starttls.test",
            "imap": "* OK starttls.test ready"}


def lines(fd: int) -> Iterator[str]:
    """Lines from ``fd``, a byte at a time: never a byte past the
    command that switches to TLS (the rest is the ClientHello)."""
    line = b""
    while True:
        byte = os.read(fd, 1)
        if not byte:
            return
        line += byte
        if byte == b"\n":
            yield line.decode("latin-1").rstrip("\r\n")
            line = b""


def say(fd: int, text: str) -> None:
    os.write(fd, text.encode() + b"\r\n")


def start_tls(how: str) -> Dict[str, str]:
    """Ask for TLS; the variables of the reply (none for ``y``)."""
    ctl = int(os.environ["SSLCTLFD"])
    os.write(ctl, b"x" if how == "garbage" else how.encode())
    got: Dict[str, str] = {}
    if how != "Y":
        return got
    data = b""
    while not data.endswith(b"\0\0") and data != b"\0":
        chunk = os.read(ctl, 4096)
        if not chunk:
            break
        data += chunk
    for entry in data.split(b"\0"):
        if entry:
            name, _, value = entry.decode("latin-1").partition("=")
            got[name] = value
    return got


def main() -> int:
    proto = sys.argv[1]
    how = sys.argv[2] if len(sys.argv) > 2 else "Y"
    inp, out = 0, 1
    say(out, GREETING[proto])
    variables: Dict[str, str] = {}
    for line in lines(inp):
        word = line.split(" ")[-1].upper() if proto == "imap" else line.split(" ")[0].upper()
        tag = line.split(" ")[0] if proto == "imap" else ""
        if word in ("QUIT", "LOGOUT"):
            say(out, "221 bye" if proto == "smtp" else "+OK bye")
            return 0
        if word in ("STARTTLS", "STLS") and inp == 0:
            if how == "exit":
                return 3
            say(out, {"smtp": "220 ready for TLS", "pop3": "+OK begin TLS",
                      "imap": f"{tag} OK begin TLS"}[proto])
            variables = start_tls(how)
            sys.stderr.write("PROGRAM: switched " + ";".join(
                f"{k}={v}" for k, v in sorted(variables.items())) + "\n")
            inp, out = int(os.environ["SSLREADFD"]), int(os.environ["SSLWRITEFD"])
            os.dup2(inp, 0)                  # the socket itself is not ours any more
            os.dup2(out, 1)
            if how == "garbage":
                sys.stderr.write("PROGRAM: after garbage %r\n" % os.read(inp, 100))
                return 4
            continue
        if proto == "smtp" and word in ("EHLO", "HELO"):
            if inp == 0:
                os.write(out, b"250-starttls.test\r\n250 STARTTLS\r\n")
            else:
                say(out, "250 " + ";".join(f"{k}={v}" for k, v in sorted(variables.items())))
            continue
        if proto == "imap" and word == "CAPABILITY":
            say(out, "* CAPABILITY IMAP4rev1 STARTTLS")
            say(out, f"{tag} OK done")
            continue
        if proto == "pop3" and word == "CAPA":
            os.write(out, b"+OK\r\nSTLS\r\n.\r\n")
            continue
        say(out, ("250 " if proto == "smtp" else "+OK ") + ("tls " if inp else "clear ") +
            ";".join(f"{k}={v}" for k, v in sorted(variables.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
