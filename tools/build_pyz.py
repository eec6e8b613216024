#!/usr/bin/env python3
"""Build ``tcpserver.pyz``: tcpserver and its tools (tcprules,
tcprulescheck, tcpclient, tcp-env, rblsmtpd) in one executable file.

Usage::

    python3 tools/build_pyz.py [-o tcpserver.pyz]

The result is a Python zip application (PEP 441): a ``#!/usr/bin/env
python3`` line followed by a zip archive holding the ``ucspi`` package
and a ``__main__.py``.  Copy it to any host with Python 3.9 or newer
and run it (``./tcpserver.pyz -v 0 7000 prog``, or ``python3
tcpserver.pyz ...``).  The archive chooses its command by the name it
is started under, like a busybox: a symlink that points to the
``.pyz`` and is called ``tcprules``, ``tcprulescheck``, ``tcpclient``,
``tcp-env`` or ``rblsmtpd`` (the whole name, optionally with ``.pyz`` or ``.py``
after it) runs that tool; any other name (``tcpserver``,
``tcpserver.pyz``, ``tcprules_v2``) runs tcpserver.  The archive also
holds ``ucspi/py.typed``.

The build is reproducible: entries are sorted and carry a fixed time
stamp, so the same sources give the same bytes.  Only sources go in
(no ``__pycache__``), so one archive serves every Python version.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
import zipfile
from typing import Iterator, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "ucspi"
INTERPRETER = "/usr/bin/env python3"
#: DOS time stamps start in 1980; a fixed one makes builds reproducible.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)

MAIN = '''\
"""Entry point of tcpserver.pyz (built by tools/build_pyz.py).

The command is chosen from the name the archive was started under:
tcprules, tcprulescheck, tcpclient, tcp-env or rblsmtpd (a symlink with that
whole name, optionally followed by .pyz or .py), else tcpserver.  The
choice itself is made by ucspi/__main__.py, so ``python3 -m ucspi``
and the archive behave the same.
"""

import runpy

runpy.run_module("ucspi", run_name="__main__", alter_sys=False)
'''


def _wanted(name: str) -> bool:
    """Whether a file of the package belongs in the archive."""
    if name.startswith(".") or name.endswith(("~", ".pyc", ".pyo", ".swp")):
        return False
    return True


def package_files(root: str = ROOT) -> Iterator[Tuple[str, str]]:
    """The files of the ``ucspi`` package, sorted.

    Args:
        root: the checkout holding ``ucspi/``.

    Returns:
        An iterator of ``(path on disk, name in the archive)``.

    Raises:
        FileNotFoundError: ``root`` has no ``ucspi/__init__.py``.
    """
    top = os.path.join(root, PACKAGE)
    if not os.path.isfile(os.path.join(top, "__init__.py")):
        raise FileNotFoundError(f"no {PACKAGE} package in {root}")
    found: List[Tuple[str, str]] = []
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        for name in files:
            if _wanted(name):
                path = os.path.join(folder, name)
                arcname = os.path.relpath(path, root).replace(os.sep, "/")
                found.append((path, arcname))
    return iter(sorted(found, key=lambda item: item[1]))


def _add(archive: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    archive.writestr(info, data)


def build(output: str, root: str = ROOT, interpreter: str = INTERPRETER) -> int:
    """Write the zip application to ``output`` (atomically, mode 0755).

    Args:
        output: path of the ``.pyz`` to create or replace.
        root: the checkout holding ``ucspi/``.
        interpreter: what goes after ``#!``.

    Returns:
        The number of files stored (``__main__.py`` included).

    Raises:
        OSError: reading the sources or writing ``output`` failed
            (``FileNotFoundError`` if there is no ``ucspi`` package).
    """
    files = list(package_files(root))
    folder = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(prefix=".build_pyz.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(b"#!" + interpreter.encode() + b"\n")
            with zipfile.ZipFile(out, "w") as archive:
                _add(archive, "__main__.py", MAIN.encode())
                for path, arcname in files:
                    with open(path, "rb") as source:
                        _add(archive, arcname, source.read())
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(files) + 1


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: ``build_pyz.py [-o OUTPUT]``; exit 0, or 111 on error."""
    parser = argparse.ArgumentParser(
        prog="build_pyz.py",
        description="Build tcpserver.pyz: tcpserver, tcprules, tcprulescheck, tcpclient.",
    )
    parser.add_argument("-o", "--output", default="tcpserver.pyz",
                        help="where to write the archive (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        count = build(args.output)
    except OSError as exc:
        sys.stderr.write(f"build_pyz: fatal: unable to build {args.output}: {exc}\n")
        return 111
    size = os.path.getsize(args.output)
    sys.stdout.write(f"build_pyz: wrote {args.output} ({count} files, {size} bytes)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
