"""Decimal numbers from user input, bounded: the one number parser.

Every number that comes from a command line, an environment variable,
a rules file or a control file is read here (issue 7, defect 4):

* :func:`decimal` is the strict form: the whole text is ASCII digits
  (leading zeros allowed) with a value from 0 to a maximum, else None.
  Callers turn None into their own usage or parse error.
* :func:`leading` is djb's ``scan_ulong``, bounded: the value of the
  leading ASCII digits (0 if there are none), a larger value being
  clamped to the maximum instead of wrapping as the C code does.

The length of the digits is checked against the maximum *before*
``int()`` sees them, so a 5,000-digit argument is refused at once: it
never reaches Python's limit on integer string conversion (a
``ValueError`` on 3.11 and later) nor costs quadratic time on older
versions.  ``str.isdigit`` is not enough on its own: it is true for
``"\\u0664"`` and ``"\\u00b2"``, which ``int()`` then reads or refuses.

:func:`shown` cuts an offending text down for an error message.

Pure and dependency-free, so that every layer can import it.
"""

from typing import Optional, Union

Text = Union[str, bytes]

#: the largest count, backlog or timeout we take (C ``int``)
INT_MAX = 2**31 - 1
#: the largest uid or gid (``2**32 - 1`` means "none")
ID_MAX = 2**32 - 2
#: the largest IPv6 scope id or interface index
SCOPE_MAX = 2**32 - 1
#: the largest TCP port
PORT_MAX = 65535
#: C ``unsigned long`` on LP64, what djb's ``scan_ulong`` reads into
ULONG_MAX = 2**64 - 1


def is_digits(text: Text) -> bool:
    """Is ``text`` one or more ASCII digits?"""
    if isinstance(text, bytes):
        return text.isdigit()            # bytes.isdigit is ASCII only
    return text.isascii() and text.isdigit()


def decimal(text: Text, maximum: int) -> Optional[int]:
    """The whole of ``text`` as a decimal number from 0 to ``maximum``.

    Args:
        text: ASCII digits, leading zeros allowed (``"007"`` is 7).
        maximum: the largest value accepted.

    Returns:
        The value, or None if ``text`` is empty, holds anything but
        ASCII digits, or is above ``maximum``.
    """
    if not is_digits(text):
        return None
    significant: Text = text.lstrip(b"0") if isinstance(text, bytes) else text.lstrip("0")
    if len(significant) > len(str(maximum)):
        return None
    value = int(significant) if significant else 0
    return value if value <= maximum else None


def leading(text: Text, maximum: int) -> int:
    """djb's ``scan_ulong``, bounded: the leading ASCII digits of
    ``text`` as a number (0 if there are none), clamped to ``maximum``.

    ``"7x"`` is 7, ``"x"`` is 0, and a run of digits worth more than
    ``maximum`` is ``maximum``.
    """
    raw = text.encode("latin-1", "replace") if isinstance(text, str) else text
    end = 0
    size = len(raw)
    while end < size and 48 <= raw[end] <= 57:
        end += 1
    if end == 0:
        return 0
    value = decimal(text[:end], maximum)
    return maximum if value is None else value


#: how much of a file name a message shows
NAME_SHOWN = 200


def cut(name: str, limit: int = NAME_SHOWN) -> str:
    """A file name for a message, cut after ``limit`` characters (a
    5,000-character argument is not echoed in full)."""
    return name if len(name) <= limit else name[:limit] + f"... ({len(name)} characters)"


def shown(text: Text, limit: int = 24) -> str:
    """``repr`` of ``text`` for an error message, cut after ``limit``
    characters (a 5,000-digit argument is not echoed in full)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"
