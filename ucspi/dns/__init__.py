"""The DNS stub resolver (djbdns style): ``msg`` builds and checks
messages (pure), ``conf`` reads the servers and rewriting rules,
``transmit`` asks one question over UDP and TCP, ``lookup`` has the PTR
and address lookups, non-blocking for the loop and blocking for tools."""
