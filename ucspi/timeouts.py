"""Every fixed time of the package, in seconds, named in one place.

What the options set (``-t`` for ident, ``-S`` for a TLS handshake,
``-T`` for an idle TLS session) and the environment
(``$MYSQL_TIMEOUT``) is not here; these are the times nobody sets:

* a deadline bounds one operation: past it the operation is given up;
* an age says how long an answer is reused;
* a pause is how long to wait before trying again.
"""

#: deadline: the whole PROXY protocol header from a trusted source
PROXY_HEADER = 5.0
#: deadline: the ``-B`` banner written to a client that does not read
#: (once the socket's buffer is full); past it the connection is dropped
BANNER = 60.0
#: deadline: a helper child (a cdb lookup too big for the loop); the
#: caller may give another
OFFLOAD = 30.0
#: deadline: what is left for a TLS client when its session ends
RELAY_FLUSH = 1.0
#: deadlines of the DNS queries to one server over UDP (djbdns's
#: schedule: each server gets the first, then each the next...)
DNS_UDP = (3.0, 11.0, 45.0)
#: deadline: one DNS query over TCP (after a truncated answer)
DNS_TCP = 10.0

#: age: the resolver settings (``/etc/resolv.conf``, ``$DNSCACHEIP``...)
DNS_CONFIG_AGE = 600.0
#: age: the PTR answer for one of the server's own addresses
LOCAL_NAME_AGE = 60.0

#: pause: accepting again after ``EMFILE``, ``ENFILE``, ``ENOBUFS``...
ACCEPT_BACKOFF = 0.1
#: pauses: reconnecting to the MySQL server, doubling up to the second
MYSQL_BACKOFF = (0.1, 5.0)
#: pauses: a lookup that found no descriptor, doubling up to the second
DESCRIPTOR_BACKOFF = (0.01, 0.25)
