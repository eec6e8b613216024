"""DNS lists (DNSBL): which names to ask, what the answers mean, and the
decision (design: dnsbl-in-the-loop, rblsmtpd).  Pure: text in, values
out; the lookups are :mod:`.lookup`'s.

* A list is ``base`` (listed when ``<reversed ip>.base`` has a TXT
  record, whose text is the refusal) or ``base:message`` (IndiMail:
  listed when it has an A record; ``message`` is the text, ``%IP%``
  replaced by the client's address; in tcpserver's space-separated
  ``DNSBL``, an ``_`` in the message stands for a space).
* An anti-list (``rblsmtpd -a``, ``DNSBL_ALLOW``) lets a client in when
  it has an A record.
* The name asked: an IPv4 address reversed (``4.3.2.1.base``), an IPv6
  address as 32 nibbles, least significant first; an IPv4-mapped
  address as IPv4.
* Spamhaus answers queries it will not answer (from a public resolver,
  over quota, a typing error in the list's name) with an A record in
  127.255.255.0/24 and a TXT record beginning ``Error:``.  Those are
  failures of the lookup, never listings (djb's rblsmtpd took the TXT
  for a listing and refused all mail).
"""

from __future__ import annotations

import ipaddress
from typing import Callable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from ..policy import read_environ
from ..scan import INT_MAX, decimal, shown

#: the refusal text of a lookup failure with fail-closed
TEMPORARY = b"temporary RBL lookup error"


class ListSpec(NamedTuple):
    """One list: its base name, and the message of an A listing (None:
    a TXT listing)."""

    base: str
    message: Optional[str] = None


def parse_lists(text: str, underscores: bool = True) -> List[ListSpec]:
    """The lists of ``DNSBL`` (space-separated; ``underscores``: an ``_``
    in a message is a space) or of one ``-r`` argument (pass
    ``underscores=False`` and one entry)."""
    found: List[ListSpec] = []
    for entry in text.split() if underscores else [text]:
        base, colon, message = entry.partition(":")
        if not base:
            continue
        if colon:
            found.append(ListSpec(base, message.replace("_", " ") if underscores else message))
        else:
            found.append(ListSpec(base))
    return found


def reversed_ip(ip: str) -> Optional[str]:
    """The client's part of the name to ask, without a trailing dot:
    ``4.3.2.1`` for 1.2.3.4, 32 nibbles for an IPv6 address; None for
    text that is not an address."""
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        return ".".join(str(b) for b in reversed(addr.packed))
    return ".".join(reversed(addr.packed.hex()))


def query_name(reversed_part: str, base: str) -> str:
    return f"{reversed_part}.{base.rstrip('.')}"


def _error_answer(address: bytes) -> bool:
    """An A answer that is a query error, not a listing
    (127.255.255.0/24)."""
    return address[:3] == b"\x7f\xff\xff"


class Answer(NamedTuple):
    """What one list said about the client.

    Attributes:
        listed: the list names the client (its text is ``text``).
        error: the lookup failed (no answer, or a query error such as
            Spamhaus' ``Error: open resolver``: ``text`` says which).
        text: the refusal text, or the error's text.
    """

    listed: bool
    error: bool
    text: bytes = b""


def txt_answer(texts: Sequence[bytes]) -> Answer:
    """A TXT list's records: listed with their text (joined, as djb's
    ``dns_txt`` reads them), unless one of them is an ``Error:``; no
    text at all (no record, or empty ones) is no listing, as for
    rblsmtpd."""
    for text in texts:
        if text.startswith(b"Error:"):
            return Answer(False, True, text)
    joined = b"".join(texts)
    if not joined:
        return Answer(False, False)
    return Answer(True, False, joined)


def a_answer(addresses: Sequence[bytes], message: str, ip: str) -> Answer:
    """An A list's records: listed with ``message`` (``%IP%`` replaced),
    unless an address is a query error."""
    for address in addresses:
        if _error_answer(address):
            return Answer(False, True, b"query error %d.%d.%d.%d" % tuple(address))
    if not addresses:
        return Answer(False, False)
    return Answer(True, False, message.replace("%IP%", ip).encode("utf-8", "surrogateescape"))


def allow_answer(addresses: Sequence[bytes]) -> Answer:
    """An anti-list's records: "listed" (let in) with an A record that
    is not a query error."""
    real = [a for a in addresses if not _error_answer(a)]
    if real:
        return Answer(True, False)
    if not addresses:
        return Answer(False, False)
    return Answer(False, True, b"query error %d.%d.%d.%d" % tuple(addresses[0]))


class Decision(NamedTuple):
    """What to do with the client.

    Attributes:
        refuse: answer it with the dialogue (no program).
        code: 451 or 553.
        text: the refusal text.
        base: the list that listed it ("" for a failure or a rule).
    """

    refuse: bool
    code: int = 451
    text: bytes = b""
    base: str = ""


ALLOW = Decision(False)


def decide(lists: Sequence[ListSpec], answers: Sequence[Optional[Answer]],
           allow: Sequence[Optional[Answer]], fail_closed: bool, bounce: bool) -> Decision:
    """The decision from every list's answer (None: no answer in time, a
    failure), anti-lists first: an anti-list that lets the client in
    wins; then the first list that lists it refuses, with 553 when
    ``bounce`` and no lookup failed (a failure makes every refusal a
    451, as in rblsmtpd); then a failure refuses with 451 when
    ``fail_closed``, else the client is let in."""
    failed = any(a is None or a.error for a in answers) or \
        any(a is None or a.error for a in allow)
    if any(a is not None and a.listed for a in allow):
        return ALLOW
    if any(a is None or a.error for a in allow) and not fail_closed:
        return ALLOW
    for spec, answer in zip(lists, answers):
        if answer is not None and answer.listed:
            return Decision(True, 553 if bounce and not failed else 451, answer.text, spec.base)
    if failed and fail_closed:
        return Decision(True, 451, TEMPORARY)
    return ALLOW


def rblsmtpd_variable(value: Optional[str], ip: str) -> Optional[Decision]:
    """``$RBLSMTPD`` (djb, with IndiMail's ``%IP%``): unset: None (ask
    the lists); empty: let in; ``-text``: refuse with 553; ``text``:
    refuse with 451."""
    if value is None:
        return None
    if value == "":
        return ALLOW
    text = value.replace("%IP%", ip).encode("utf-8", "surrogateescape")
    if text.startswith(b"-"):
        return Decision(True, 553, text[1:])
    return Decision(True, 451, text)


# -- tcpserver's settings: the environment, then a client's rule ------------------------------
#: DNSBL_TIMEOUT's default: seconds for all the list lookups of a client
DEFAULT_TIMEOUT = 10
#: DNSBL_DIALOGUE_TIMEOUT's default: rblsmtpd's -t
DEFAULT_DIALOGUE_TIMEOUT = 60
#: the variables read (RBLSMTPD only from a rule, RBLGREETING only from
#: the environment)
NAMES = ("DNSBL", "DNSBL_ALLOW", "DNSBL_TIMEOUT", "DNSBL_FAIL", "DNSBL_BOUNCE",
         "DNSBL_DIALOGUE_TIMEOUT")
_RULE_NAMES = frozenset(name.encode() for name in NAMES)


class Settings:
    """The DNS lists a client is asked about, and how.

    Attributes:
        lists: ``DNSBL``, parsed (empty: no DNSBL).
        allow: ``DNSBL_ALLOW``'s anti-lists.
        timeout: ``DNSBL_TIMEOUT``: seconds for all the lookups.
        fail_closed: ``DNSBL_FAIL=closed`` (default open).
        bounce: ``DNSBL_BOUNCE`` set and not empty: 553 for listings.
        dialogue_timeout: ``DNSBL_DIALOGUE_TIMEOUT`` (0: the refusal is
            the greeting).
        greeting: ``RBLGREETING`` (default ``rblsmtpd.local``).
    """

    __slots__ = ("lists", "allow", "timeout", "fail_closed", "bounce", "dialogue_timeout",
                 "greeting")

    def __init__(self, lists: Sequence[ListSpec] = (), allow: Sequence[str] = (),
                 timeout: int = DEFAULT_TIMEOUT, fail_closed: bool = False,
                 bounce: bool = False, dialogue_timeout: int = DEFAULT_DIALOGUE_TIMEOUT,
                 greeting: str = "rblsmtpd.local") -> None:
        self.lists = list(lists)
        self.allow = list(allow)
        self.timeout = timeout
        self.fail_closed = fail_closed
        self.bounce = bounce
        self.dialogue_timeout = dialogue_timeout
        self.greeting = greeting

    def copy(self) -> "Settings":
        return Settings(self.lists, self.allow, self.timeout, self.fail_closed, self.bounce,
                        self.dialogue_timeout, self.greeting)

    def lookups(self) -> int:
        """How many lookups run at once for a client (a descriptor each)."""
        return len(self.lists) + len(self.allow) if self.lists else 0

    def with_rule(self, changes: Sequence[Tuple[bytes, Optional[bytes]]],
                  warn: Callable[[str], None]) -> "Settings":
        """These settings with a client's rule applied (``DNSBL=""``
        exempts the client); a bad value is one warning and that
        setting keeps the server's value."""
        mine: Optional[Settings] = None
        for name, value in changes:
            if name not in _RULE_NAMES:
                continue
            if mine is None:
                mine = self.copy()
            try:
                _set(mine, name.decode(), "" if value is None else
                     value.decode("utf-8", "surrogateescape"))
            except ValueError as exc:
                warn(str(exc))
        return mine if mine is not None else self


def _seconds(name: str, text: str) -> int:
    value = decimal(text, INT_MAX)
    if value is None:
        raise ValueError(f"{name} wants a number of seconds from 0 to {INT_MAX}, "
                         f"not {shown(text)}")
    return value


def _set(settings: Settings, name: str, text: str) -> None:
    """Raises ValueError for a bad value."""
    if name == "DNSBL":
        settings.lists = parse_lists(text)
    elif name == "DNSBL_ALLOW":
        settings.allow = text.split()
    elif name == "DNSBL_TIMEOUT":
        settings.timeout = _seconds(name, text) if text else DEFAULT_TIMEOUT
    elif name == "DNSBL_DIALOGUE_TIMEOUT":
        settings.dialogue_timeout = _seconds(name, text) if text else DEFAULT_DIALOGUE_TIMEOUT
    elif name == "DNSBL_FAIL":
        if text not in ("", "open", "closed"):
            raise ValueError(f"DNSBL_FAIL wants open or closed, not {shown(text)}")
        settings.fail_closed = text == "closed"
    elif name == "DNSBL_BOUNCE":
        settings.bounce = text != ""


def from_environ(environ: Mapping[str, str]) -> Settings:
    """tcpserver's own settings.

    Raises:
        UsageError: a bad ``DNSBL_TIMEOUT``, ``DNSBL_DIALOGUE_TIMEOUT``
            or ``DNSBL_FAIL``.
    """
    return read_environ(Settings(greeting=environ.get("RBLGREETING") or "rblsmtpd.local"),
                        NAMES, environ, _set)


def rule_rblsmtpd(changes: Sequence[Tuple[bytes, Optional[bytes]]]) -> Optional[str]:
    """``RBLSMTPD`` as a client's rule sets it (the last setting), or
    None."""
    found: Optional[str] = None
    for name, value in changes:
        if name == b"RBLSMTPD":
            found = None if value is None else value.decode("utf-8", "surrogateescape")
    return found
