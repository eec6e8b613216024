"""ucspi: a pure-Python UCSPI TCP super-server (ucspi-tcp's tcpserver,
with IndiMail's additions), built from the standard library alone.

The package is split into pure modules over bytes (option parsing, IP
text forms, DNS and ident messages, cdb files, rules, log formatting)
and thin I/O drivers on top of them.  The pure modules are what
projects vendoring ``ucspi/`` import.
"""

__version__ = "0.1.0"
