"""``PLUGINn``, ``PLUGINn_dir``, ``PLUGINn_init`` (IndiMail's tcpserver_plugin.c).

In the environment's stored order, each ``PLUGIN<digits>=PATH`` entry is
loaded (:func:`.loader.load`), then ``PLUGIN<n>_dir`` (if set) becomes
the working directory and ``PLUGIN<n>_init`` (if set) is called as
``int f(int)`` with 0 at start-up and 1 on SIGHUP.  A failure is fatal
at start-up (exit 111); on SIGHUP it is a warning and the server goes on
(design: signals).
"""

from __future__ import annotations

import ctypes
import os
from typing import Mapping

from ..errors import Fatal, errtext
from . import entries
from .loader import load, symbol


class Plugins:
    """The ``PLUGINn`` entries of the server's environment."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = dict(environ)
        self.entries = entries(environ)

    def run(self, reload: bool) -> None:
        """Load, chdir, init, for each entry in order.

        Raises:
            Fatal: ``tcdlmopen: ...``, ``chdir: DIR: ...``, ``dlsym: ...``.
        """
        for number, path in self.entries:
            lib = load(path)
            folder = self.environ.get(f"PLUGIN{number}_dir")
            if folder is not None:
                try:
                    os.chdir(folder)
                except OSError as exc:
                    raise Fatal(f"chdir: {folder}: {errtext(exc)}") from None
            init = self.environ.get(f"PLUGIN{number}_init")
            if init:
                function = symbol(lib, init)
                function.argtypes = [ctypes.c_int]
                function.restype = ctypes.c_int
                function(1 if reload else 0)

    def reload(self) -> None:
        self.run(reload=True)
