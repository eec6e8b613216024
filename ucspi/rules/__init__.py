"""Access rules: ``parse`` compiles the tcprules language into cdb
records (pure), ``lookup`` says which key applies to a client and what
its value means, ``cache`` answers a server's lookups from memory."""
