"""TLS for tcpserver (``-n -s -i -a -L -f -M -N -z -S -T``).

* :mod:`.settings` is pure: the file names, the protocol bounds of
  ``-M`` and the cipher string, from the options and the environment.
* :mod:`.context` builds the ``ssl`` contexts in the parent (the default
  one and one per SNI name), with IndiMail's start-up error lines, and
  rebuilds them on SIGHUP.
* :mod:`.relay` is the per-connection child (DECISIONS D20): handshake,
  program started on two pipes, relay with half-closes, exit with the
  program's status.

``ssl`` is imported only by :mod:`.context` and :mod:`.relay`, which the
server imports only when TLS is on, before the privilege drop.
"""
