"""Dropping privileges after the listening socket is bound (design: privileges).

The identity is worked out at start-up (:func:`resolve`, so an unknown
user or group is reported before anything is bound) and applied after
``bind``/``listen`` (:func:`drop`): ``setgroups`` to exactly the target
groups, then ``setgid``, then ``setuid``, then a check that neither
root's uid nor group 0 (as the gid or a supplementary group) can be
regained, unless the target identity has it.

What the options mean:

* ``-u NAME``: that user's uid and primary gid.
* ``-u NUMBER`` (or ``-U`` with ``$UID``): that uid; the gid is the
  user's primary gid when the uid has a passwd entry.  A uid without
  one needs ``-g`` (or ``$GID``) when tcpserver runs as root: there is
  no group to take, and keeping root's (IndiMail does: ``Gid 0``,
  ``Groups: 0``) would hand root's groups to the program.  That is a
  start-up error, exit 100 (issue 7, defect 5).
* ``-g GROUP[,GROUP...]`` (numbers or names; or ``-U`` with ``$GID``):
  the first is the gid, all of them the supplementary groups.
  It overrides the gid implied by ``-u``.
* Whatever is chosen, the supplementary groups become exactly the
  chosen group list (or ``[gid]``): root's groups never leak to the
  program (IndiMail keeps them with a numeric ``-u``).
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Any, Callable, List, Optional

from ..errors import EXIT_USAGE, Fatal, errtext
from ..scan import ID_MAX, decimal, is_digits, shown


class Identity:
    """The uid, gid and groups to become."""

    def __init__(self, uid: Optional[int] = None, gid: Optional[int] = None) -> None:
        self.uid = uid
        self.gid = gid
        self.groups: Optional[List[int]] = None
        self.explicit_gid = False   # from -g or $GID, not implied by -u

    def wanted(self) -> bool:
        return self.uid is not None or self.gid is not None


def _group(text: str) -> int:
    if is_digits(text):
        gid = decimal(text, ID_MAX)
        if gid is None:
            raise Fatal(f"unable to set gid: invalid argument: {shown(text)}")
        return gid
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise Fatal(f"unable to set gid: unknown group {text}") from None


def resolve(user: Optional[str], uid: Optional[int], gid: Optional[int],
            groups: Optional[str]) -> Identity:
    """Work out the target identity from the options.

    Raises:
        Fatal: an unknown user or group name (exit 111); as root, a
            numeric uid without a passwd entry and no group (exit 100).
    """
    ident = Identity(uid=uid, gid=gid)
    no_entry = False
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise Fatal(f"unable to set user: unknown user {user}") from None
        ident.uid, ident.gid = entry.pw_uid, entry.pw_gid
    elif uid is not None and gid is None:
        try:
            ident.gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            ident.gid, no_entry = None, True
    if groups:
        listed = [_group(g) for g in groups.split(",") if g]
        if listed:
            ident.gid, ident.groups = listed[0], listed
            ident.explicit_gid = True
    elif gid is not None:
        ident.gid, ident.explicit_gid = gid, True
    if no_entry and ident.gid is None and os.geteuid() == 0:
        raise Fatal(f"uid {uid} has no passwd entry, so no group to switch to: "
                    f"give -g with a group for it (or $GID with -U)", EXIT_USAGE)
    if ident.gid is not None and ident.groups is None:
        ident.groups = [ident.gid]
    return ident


def drop(ident: Identity) -> None:
    """Become ``ident``.

    Raises:
        Fatal: with the C texts ``unable to set gid: <err>`` /
            ``unable to set uid: <err>``.
    """
    if not ident.wanted():
        return
    root = os.geteuid() == 0
    if root or ident.explicit_gid:
        gid = ident.gid if ident.gid is not None else os.getgid()
        groups = ident.groups if ident.groups is not None else [gid]
        try:
            os.setgroups(groups)
            os.setgid(gid)
        except OSError as exc:
            raise Fatal(f"unable to set gid: {errtext(exc)}") from None
    if ident.uid is not None:
        try:
            os.setuid(ident.uid)
        except OSError as exc:
            raise Fatal(f"unable to set uid: {errtext(exc)}") from None
        if ident.uid != 0:
            _check_no_way_back()


def _check_no_way_back() -> None:
    """After ``setuid``: neither root's uid, nor group 0, nor group 0
    among the supplementary groups may be had back (only the ones the
    target identity does not hold already are tried).

    Raises:
        Fatal: one of them could be regained.
    """
    if _regained(os.setuid, 0):
        raise Fatal("unable to set uid: root could be regained")
    if 0 not in (os.getgid(), os.getegid()) and _regained(os.setgid, 0):
        raise Fatal("unable to set gid: group 0 could be regained")
    if 0 not in os.getgroups() and _regained(os.setgroups, [0]):
        raise Fatal("unable to set gid: the supplementary group 0 could be regained")


def _regained(change: Callable[[Any], None], value: Any) -> bool:
    """Does ``change(value)`` work?  (It must not, after the drop.)"""
    try:
        change(value)
    except OSError:
        return False
    return True
