"""Start-up checks: typos that would otherwise show only later.

The C server starts whatever its arguments say; so does ours (these are
warnings, not errors: a program or a rules file may well appear after
the server starts).  But a name typed wrong should not cost an
administrator an afternoon, so at start-up, after binding and the
privilege drop (the checks see what the server will see), one warning
line is logged for each of:

* a program that is not found (on ``$PATH`` for a name without ``/``)
  or not executable;
* ``-x`` naming a file that does not exist (unless ``-X``), or one that
  is not a cdb (every connection would then be dropped with ``unable to
  read``);
* ``-U`` with neither ``$UID`` nor ``$GID`` set (the server keeps its
  privileges).

A ``-c`` argument that is neither a number nor an existing file is not
a warning but a usage error, found before anything is bound
(:meth:`.limits.Limit.from_options`).
"""

from __future__ import annotations

import os
import stat
from typing import List, Optional

from ..errors import UcspiError, errtext
from ..options import Options
from ..plugin import is_shared_object
from ..scan import cut

#: glibc's search path when $PATH is unset (confstr _CS_PATH)
DEFAULT_PATH = "/bin:/usr/bin"
#: the biggest -x file checked through at start-up (a few milliseconds)
CHECK_MAX = 256 << 10
#: the longest name shown in full in a warning
SHOWN = 200


def _shown(name: str) -> str:
    return cut(name, SHOWN)


def program_problem(name: str, path: Optional[str]) -> Optional[str]:
    """Why ``name`` cannot be run as ``posix_spawnp`` would run it, or
    None.  ``path`` is the search path (None: :data:`DEFAULT_PATH`)."""
    if "/" in name:
        candidates = [name]
    else:
        folders = (DEFAULT_PATH if path is None else path).split(":")
        candidates = [os.path.join(folder or ".", name) for folder in folders]
    found = False
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        found = True
        if os.access(candidate, os.X_OK):
            return None
    if found:
        return f"program is not executable: {_shown(name)}"
    return f"program not found: {_shown(name)}"


def rules_problem(path: str, missing_ok: bool) -> Optional[str]:
    """Why the ``-x`` file cannot be used, or None.  A file small enough
    to be held in memory is checked through; a bigger one only opened
    (its header read), so the check stays quick."""
    from ..cdb.read import CdbError, CdbReader
    from ..rules.lookup import explain
    try:
        try:
            with CdbReader(path) as db:
                if db.size <= CHECK_MAX:
                    db.verify()
        except CdbError as exc:
            explain(exc, path)
            raise
    except FileNotFoundError:
        return None if missing_ok else f"rules file does not exist: {_shown(path)}"
    except (OSError, UcspiError) as exc:
        return f"unable to read rules file {_shown(path)}: {errtext(exc)}"
    return None


def startup_warnings(opts: Options) -> List[str]:
    """The warnings for these options (see the module docstring)."""
    found: List[str] = []
    problem = None if is_shared_object(opts.argv[0]) else program_problem(opts.argv[0], os.environ.get("PATH"))
    if problem:
        found.append(problem)
    if opts.rules is not None:
        problem = rules_problem(opts.rules, opts.rules_missing_ok)
        if problem:
            found.append(problem)
    if opts.ids_from_env and "UID" not in os.environ and "GID" not in os.environ:
        found.append("-U given but neither $UID nor $GID is set: privileges are kept")
    return found
