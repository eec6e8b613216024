"""The process layer: how a command of this package starts and keeps
processes, whatever it serves or is a client of.

* :mod:`.signals`: the signals a long-running command catches, the
  wake-up pipe they write to, the SIGTERM actions, and the defaults a
  child or a program gets back.
* :mod:`.child`: the hygiene of every forked child (signals, the garbage
  collector, inherited descriptors, ``os._exit``).
* :mod:`.launch`: the ``Launch`` and ``Program`` protocols and
  :class:`~.launch.Spawn`, the ``posix_spawn`` launcher.
* :mod:`.reload`: the registry of what SIGHUP re-reads.
* :mod:`.offload`: work done in a helper child, its answer read in the
  loop.

Nothing here knows about connections, rules or TLS: ``server/``,
``tls/``, ``plugin/`` and the client commands build on it, and it
imports nothing of theirs.
"""
