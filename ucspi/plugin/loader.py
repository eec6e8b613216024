"""Loading shared objects and calling their functions (spec subsystems §2.2).

The objects are loaded once, in the parent (:func:`load` keeps them by
path), so a forked child finds the function already resolved.  Errors
are :class:`~ucspi.errors.Fatal` with IndiMail's words
(``tcdlmopen: PATH: ERROR``, ``dlsym: NAME: ERROR``), exit 111.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Dict, List, Optional

from ..errors import Fatal
from ..server import child
from ..server.launch import Counts
from ..server.reload import Reloads

#: now, local, deep-bind (where the platform has it), no-delete
FLAGS = (os.RTLD_NOW | os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
         | getattr(os, "RTLD_NODELETE", 0))

_loaded: Dict[str, ctypes.CDLL] = {}
_libc: Optional[ctypes.CDLL] = None

CharArray = Any     # a NULL-terminated ctypes array of char *


def function_name(path: str) -> str:
    """The function a ``.so`` program is called by: its base name without
    ``.so`` (``/usr/lib/p/qmail_smtpd.so`` -> ``qmail_smtpd``)."""
    return os.path.basename(path)[:-3]


def load(path: str) -> ctypes.CDLL:
    """Load ``path`` (once per path per process).

    Raises:
        Fatal: ``tcdlmopen: PATH: ERROR``.
    """
    lib = _loaded.get(path)
    if lib is None:
        try:
            lib = ctypes.CDLL(path, mode=FLAGS)
        except OSError as exc:
            raise Fatal(f"tcdlmopen: {path}: {exc}") from None
        _loaded[path] = lib
    return lib


def symbol(lib: ctypes.CDLL, name: str) -> Any:
    """The function ``name`` of ``lib``.

    Raises:
        Fatal: ``dlsym: NAME: ERROR``.
    """
    try:
        return getattr(lib, name)
    except AttributeError as exc:
        raise Fatal(f"dlsym: {name}: {exc}") from None


def strings(items: List[bytes]) -> CharArray:
    """A NULL-terminated ``char *[]`` of ``items``."""
    return (ctypes.c_char_p * (len(items) + 1))(*items)   # the last one stays NULL


def _libc_handle() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)
    return _libc


def purge_stdout() -> None:
    """Drop what C's ``stdout`` buffer holds in this (new) child: output
    an init function left buffered in the parent is not the
    connection's (glibc's ``__fpurge``; elsewhere nothing is done)."""
    try:
        libc = _libc_handle()
        libc.__fpurge(ctypes.c_void_p.in_dll(libc, "stdout"))
    except (OSError, AttributeError, ValueError):
        pass


def flush_stdio() -> None:
    """``fflush(NULL)``: what the function left in C's stdio buffers
    reaches its descriptors before the child's ``_exit``."""
    try:
        _libc_handle().fflush(None)
    except (OSError, AttributeError):
        pass


class SharedObject:
    """A ``prog.so`` program: loaded in the parent by :meth:`load`,
    called in a forked child by :meth:`start`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = function_name(path)
        self.function: Any = None

    def load(self) -> None:
        """Load the object and find its function.  Raises Fatal."""
        function = symbol(load(self.path), self.name)
        function.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                             ctypes.POINTER(ctypes.c_char_p)]
        function.restype = ctypes.c_int
        self.function = function

    def call(self, argv: List[str], env: Dict[bytes, bytes]) -> int:
        """Call the function with ``argv`` and ``env`` (the process's own
        environment is left alone); return its value as an exit status."""
        if self.function is None:
            self.load()
        args = [os.fsencode(a) for a in argv]
        envp = [k + b"=" + v for k, v in env.items()]
        value = int(self.function(len(args), strings(args), strings(envp)))
        flush_stdio()
        return value & 0xFF

    def start(self, fd0: int, fd1: int, argv: List[str], env: Dict[bytes, bytes]) -> int:
        """Fork a child with fd 0 on ``fd0`` and fd 1 on ``fd1`` that calls
        the function and exits with its value; return the child's pid.

        Raises:
            OSError: the fork failed.
        """
        def work() -> int:
            purge_stdout()
            os.dup2(fd0, 0)
            os.dup2(fd1, 1)
            for fd in {fd0, fd1} - {0, 1, 2}:
                os.close(fd)
            return self.call(argv, env)
        return child.fork(work, keep=(fd0, fd1))


class SoLaunch:
    """The launcher of a ``prog.so`` program (the Fork path)."""

    def __init__(self, argv: List[str]) -> None:
        self.argv = argv
        self.name = argv[0]
        self.program = SharedObject(argv[0])

    def attach(self, reloads: Reloads, counts: Counts) -> None:
        """Nothing to reload (the ``PLUGINn`` inits have their own action)."""

    def ready(self) -> None:
        self.program.load()

    def start(self, fd: int, env: Dict[bytes, bytes]) -> int:
        return self.program.start(fd, fd, self.argv, env)
