"""Shared-object programs (``prog.so``) and ``PLUGINn`` pre-loading.

* :mod:`.loader` loads an object with ctypes (now, local, deep-bind,
  no-delete), finds its functions and calls
  ``int f(int argc, char **argv, char **envp)`` in a forked child with
  the connection on fd 0 and 1 (design: shared-objects).
* :mod:`.preload` runs the ``PLUGINn``, ``PLUGINn_dir`` and
  ``PLUGINn_init`` entries of the environment, at start-up (init 0) and
  on SIGHUP (init 1).

``ctypes`` is imported only when a ``.so`` program or a ``PLUGINn`` is
asked for, before the privilege drop; the objects are loaded after it,
in the parent, so every child inherits them.

This module itself is light (no ``ctypes``): the server asks it whether
any ``PLUGINn`` is set before importing the rest.
"""

from __future__ import annotations

import re
from typing import List, Mapping, Tuple

_ENTRY = re.compile(r"PLUGIN([0-9]+)\Z")


def entries(environ: Mapping[str, str]) -> List[Tuple[int, str]]:
    """``(n, path)`` of the ``PLUGINn`` entries, in the environment's
    stored order (``PLUGIN00`` is n = 0; ``PLUGIN0_dir`` is not an entry)."""
    found = []
    for name, value in environ.items():
        match = _ENTRY.match(name)
        if match:
            found.append((int(match.group(1)), value))
    return found


def has_dirs(environ: Mapping[str, str]) -> bool:
    """True if some ``PLUGINn_dir`` will change the working directory."""
    return any(f"PLUGIN{n}_dir" in environ for n, _ in entries(environ))


def is_shared_object(name: str) -> bool:
    """A program is a shared object when its name has a ``/`` and ends in
    ``.so`` (a bare ``x.so`` is searched on ``$PATH`` and exec'd)."""
    return "/" in name and name.endswith(".so") and len(name.rsplit("/", 1)[1]) > 3
