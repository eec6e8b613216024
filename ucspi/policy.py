"""The limits one client is served under, from the names sites already
keep in their environment and rules files (design: more-limits).

=================  ==============================================  ============
variable           limits                                          0 means
=================  ==============================================  ============
``MAXPERIP``       live connections from the address (IndiMail;    no limit
                   ``-C`` is its default)
``MAXCONIP``       the same (ucspi-ssl's name)                     no limit
``MAXCONNIP``      the same (the qmail limits patch's name)        refuse all
``MAXCONNC``       live connections from the address's network:    refuse all
                   its IPv4 /24 or IPv6 /64
``MAXLOAD``        refuse while the 1-minute load average × 100    no limit
                   is above it
``MAXCONNRATE``    connections admitted from the address in any    no limit
                   ``CONNRATEWINDOW`` seconds (default 60)
``DIEMSG``         the line a client refused by a limit is sent    (empty line)
=================  ==============================================  ============

Every limit that is set applies; an empty value is the same as unset.
tcpserver's own environment gives the defaults (a value that is not a
number in range is a usage error, :func:`from_environ`); a client's
rule (cdb or MySQL) overrides them for that client, and a bad value
there is one warning naming the variable, after which that limit does
not apply to the client (the rule's other settings do,
:meth:`Policy.with_rule`).  ``MAXPERIP`` from a rule keeps IndiMail's
reading (the leading digits) and is handled with the rule itself.

Pure: text in, values out.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, TypeVar

from .errors import UsageError
from .scan import INT_MAX, decimal, shown

T = TypeVar("T")

Change = Tuple[bytes, Optional[bytes]]

#: CONNRATEWINDOW when none is given, in seconds
DEFAULT_WINDOW = 60
#: the numbers that may be set (DIEMSG is text)
NUMBERS = ("MAXCONIP", "MAXCONNIP", "MAXCONNC", "MAXLOAD", "MAXCONNRATE", "CONNRATEWINDOW")
NAMES = NUMBERS + ("DIEMSG",)
_NAMES_BYTES = frozenset(name.encode() for name in NAMES)


class Policy:
    """The limits for one client (None: not set).

    Attributes:
        max_per_host: ``-C``/``MAXPERIP`` (0: none).
        maxconip: ``MAXCONIP`` (0: none).
        maxconnip: ``MAXCONNIP`` (0: refuse every connection).
        maxconnc: ``MAXCONNC`` (0: refuse every connection).
        maxload: ``MAXLOAD`` (0: none).
        rate: ``MAXCONNRATE`` (0: none).
        window: ``CONNRATEWINDOW`` in seconds.
        diemsg: ``DIEMSG``, as bytes, or None.
    """

    __slots__ = ("max_per_host", "maxconip", "maxconnip", "maxconnc", "maxload", "rate",
                 "window", "diemsg")

    def __init__(self, max_per_host: int = 0, maxconip: Optional[int] = None,
                 maxconnip: Optional[int] = None, maxconnc: Optional[int] = None,
                 maxload: Optional[int] = None, rate: Optional[int] = None,
                 window: int = DEFAULT_WINDOW, diemsg: Optional[bytes] = None) -> None:
        self.max_per_host = max_per_host
        self.maxconip = maxconip
        self.maxconnip = maxconnip
        self.maxconnc = maxconnc
        self.maxload = maxload
        self.rate = rate
        self.window = window
        self.diemsg = diemsg

    def copy(self) -> "Policy":
        return Policy(self.max_per_host, self.maxconip, self.maxconnip, self.maxconnc,
                      self.maxload, self.rate, self.window, self.diemsg)

    def per_address(self) -> bool:
        """Does any limit count by address or network?"""
        return bool(self.max_per_host or self.maxconip or self.maxconnip is not None
                    or self.maxconnc is not None or self.rate)

    def with_rule(self, changes: Iterable[Change], max_per_host: int,
                  warn: Callable[[str], None]) -> "Policy":
        """This policy with a client's rule applied: its variables
        override, in order (a removal, ``-NAME``, unsets the limit).

        Args:
            changes: the rule's environment changes.
            max_per_host: the per-host limit the rule gave (``MAXPERIP``).
            warn: told about a bad value (``MAXCONNIP=x``); that limit
                is then not applied.
        """
        mine: Optional[Policy] = None
        for name, value in changes:
            if name not in _NAMES_BYTES:
                continue
            if mine is None:
                mine = self.copy()
            text = name.decode()
            try:
                _set(mine, text,
                     None if value is None else value.decode("utf-8", "surrogateescape"))
            except ValueError as exc:
                warn(f"{exc}: that limit is not applied to this client")
                _set(mine, text, None)
        result = mine if mine is not None else self
        if result.max_per_host != max_per_host:
            if result is self:
                result = self.copy()
            result.max_per_host = max_per_host
        return result


def _number(name: str, text: str) -> Optional[int]:
    """The value of ``name`` (None: unset).  Raises ValueError."""
    if text == "":
        return None
    value = decimal(text, INT_MAX)
    if value is None or (name == "CONNRATEWINDOW" and value == 0):
        low = 1 if name == "CONNRATEWINDOW" else 0
        raise ValueError(f"{name} wants a number from {low} to {INT_MAX}, not {shown(text)}")
    return value


def _set(policy: Policy, name: str, text: Optional[str]) -> None:
    """Set one variable on ``policy`` (None or "": unset).  Raises
    ValueError for a bad number."""
    if name == "DIEMSG":
        policy.diemsg = None if text is None else text.encode("utf-8", "surrogateescape")
        return
    value = None if text is None else _number(name, text)
    if name == "CONNRATEWINDOW":
        policy.window = DEFAULT_WINDOW if value is None else value
    else:
        setattr(policy, _FIELDS[name], value)


_FIELDS: Dict[str, str] = {
    "MAXCONIP": "maxconip", "MAXCONNIP": "maxconnip", "MAXCONNC": "maxconnc",
    "MAXLOAD": "maxload", "MAXCONNRATE": "rate",
}


def from_environ(environ: Mapping[str, str], max_per_host: int) -> Policy:
    """The defaults, from tcpserver's own environment.

    Raises:
        UsageError: a value that is not a number in range.
    """
    return read_environ(Policy(max_per_host), NAMES, environ, _set)


def read_environ(target: T, names: Iterable[str], environ: Mapping[str, str],
                 set_one: Callable[[T, str, str], None]) -> T:
    """Each of ``names`` that ``environ`` holds, set on ``target`` by
    ``set_one(target, name, text)``; tcpserver's own environment, so the
    ValueError of a bad value becomes a UsageError (the start-up stops).
    Returns ``target``."""
    for name in names:
        text = environ.get(name)
        if text is None:
            continue
        try:
            set_one(target, name, text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return target
