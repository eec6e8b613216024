"""TLS (``-n -s -i -a -L -f -M -N -z -w -Y -y -S -T``), for the server
and, side neutral, for a client.

* :mod:`.settings` is pure: the file names, the protocol bounds of
  ``-M`` and the cipher string, from the options and the environment.
* :mod:`.record` is pure: how long a client's first record is (the
  server waits for it in the loop).
* :mod:`.failure` has IndiMail's handshake failure lines.
* :mod:`.context` builds the ``ssl`` contexts in the parent (the default
  one and one per SNI name), with IndiMail's start-up error lines, and
  rebuilds them on SIGHUP.
* :mod:`.channel` is one session over memory BIOs, server or client,
  started at once or later; :mod:`.relay` drives its handshake on a
  socket and relays between the socket and a program's pipes, in
  plaintext first if need be.
* :mod:`.launch` is the server's launcher: the relay child per
  connection, which waits for its program.
* :mod:`.client` is a client's context (tcpclient's ``-n -c -L``).

``ssl`` is imported only by :mod:`.context`, :mod:`.channel`,
:mod:`.relay`, :mod:`.launch` and :mod:`.client`, which a command
imports only when TLS is asked for, before it drops privileges.
"""
