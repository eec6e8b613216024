"""The MySQL/MariaDB side of ``-m`` (design: mysql-rules; what
IndiMail does, with its defects fixed).

* ``packets`` and ``auth`` are pure (design: pure-core-thin-shell): the wire framing,
  length-encoded values, the handshake, OK/ERR/EOF and text result-set
  packets, and the password scrambles (the only module here that imports
  ``hashlib``).
* ``protocol`` is the sans-I/O client, :class:`~.protocol.Session`:
  bytes from the server in, bytes to send and results out, no sockets.
  It never imports ``ssl``: when TLS is wanted it says so and the
  driver starts it on the transport.
* The driver (sockets, timeouts, TLS, the ``$MYSQL_LIB`` ctypes
  variant) and the rules lookup live beside these modules.
"""
