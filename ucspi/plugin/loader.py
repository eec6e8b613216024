"""Loading shared objects and calling their functions (as IndiMail's load_shared.c does).

The objects are loaded once, in the parent (:func:`load` keeps them by
path), so a forked child finds the function already resolved.  Errors
are :class:`~ucspi.errors.Fatal` with IndiMail's words
(``tcdlmopen: PATH: ERROR``, ``dlsym: NAME: ERROR``), exit 111.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Dict, List, Optional, Sequence

from ..errors import Fatal
from ..proc import child
from ..proc.launch import Counts
from ..proc.reload import Reloads

#: now, local, deep-bind (where the platform has it), no-delete
FLAGS = (os.RTLD_NOW | os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
         | getattr(os, "RTLD_NODELETE", 0))

_loaded: Dict[str, ctypes.CDLL] = {}

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


class Stdio:
    """C's stdio, found once in the parent (:meth:`SharedObject.ready`) so
    that a child only calls: ``__fpurge(stdout)`` before the function
    (what an init left in the parent's buffer is not the connection's)
    and ``fflush(NULL)`` after it (what the function left reaches its
    descriptors before the child's ``_exit``).  Where glibc's
    ``__fpurge`` or ``stdout`` cannot be found, nothing is purged."""

    def __init__(self) -> None:
        self.fpurge: Any = None
        self.stdout: Any = None
        self.fflush: Any = None
        try:
            libc = ctypes.CDLL(None)
            self.fflush = libc.fflush
            self.fpurge = getattr(libc, "__fpurge")   # (no name mangling)
            self.stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        except (OSError, AttributeError, ValueError):
            pass

    def purge_stdout(self) -> None:
        if self.fpurge is not None and self.stdout is not None:
            self.fpurge(self.stdout)

    def flush(self) -> None:
        if self.fflush is not None:
            self.fflush(None)


_stdio: Optional[Stdio] = None


def stdio() -> Stdio:
    """The one :class:`Stdio` of the process."""
    global _stdio
    if _stdio is None:
        _stdio = Stdio()
    return _stdio


class SharedObject:
    """The launcher of a ``prog.so`` program: loaded in the parent by
    :meth:`ready` (after the privilege drop), its function called in a
    forked child by :meth:`start_on`."""

    def __init__(self, argv: List[str]) -> None:
        self.argv = argv
        self.name = argv[0]
        self.function_name = function_name(argv[0])
        self.function: Any = None
        self.stdio: Optional[Stdio] = None

    def attach(self, reloads: Reloads, counts: Counts) -> None:
        """Nothing to reload (the ``PLUGINn`` inits have their own action)."""

    def ready(self) -> None:
        """Load the object and find its function.  Raises Fatal."""
        function = symbol(load(self.name), self.function_name)
        function.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                             ctypes.POINTER(ctypes.c_char_p)]
        function.restype = ctypes.c_int
        self.function = function
        self.stdio = stdio()

    def call(self, env: Dict[bytes, bytes]) -> int:
        """Call the function with the program's argv and ``env`` (the
        process's own environment is left alone); return its value as an
        exit status."""
        if self.function is None:
            self.ready()
        args = [os.fsencode(a) for a in self.argv]
        envp = [k + b"=" + v for k, v in env.items()]
        value = int(self.function(len(args), strings(args), strings(envp)))
        (self.stdio or stdio()).flush()
        return value & 0xFF

    def start(self, fd: int, env: Dict[bytes, bytes]) -> int:
        return self.start_on(fd, fd, env)

    def start_on(self, fd0: int, fd1: int, env: Dict[bytes, bytes],
                 keep: Sequence[int] = ()) -> int:
        """Fork a child with fd 0 on ``fd0`` and fd 1 on ``fd1`` (and
        ``keep`` open) that calls the function and exits with its value;
        return the child's pid.

        Raises:
            OSError: the fork failed.
        """
        def work() -> int:
            (self.stdio or stdio()).purge_stdout()
            os.dup2(fd0, 0)
            os.dup2(fd1, 1)
            for fd in {fd0, fd1} - {0, 1, 2}:
                os.close(fd)
            return self.call(env)
        return child.fork(work, keep=(fd0, fd1, *keep))
