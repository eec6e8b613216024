"""The one option scanner (ucspi/argscan.py) that tcpserver, tcpclient,
tcp-env and rblsmtpd share: djb's getopt rules, with the letters, the
request words and the error as parameters."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest

from ucspi.argscan import Getopt


class Bad(Exception):
    pass


def scan(argv: List[str]) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
    return Getopt(argv, "tx", "hHv", {"--help": Bad("help")}, Bad).all()


@pytest.mark.parametrize("argv, opts, rest", [
    (["-hv", "prog"], [("h", None), ("v", None)], ["prog"]),
    (["-t5", "-x", "f.cdb", "prog", "-h"], [("t", "5"), ("x", "f.cdb")], ["prog", "-h"]),
    (["-ht", "5", "prog"], [("h", None), ("t", "5")], ["prog"]),
    (["-tH", "prog"], [("t", "H")], ["prog"]),          # the rest of the word is the argument
    (["-h", "--", "-v"], [("h", None)], ["-v"]),
    (["-h", "-", "x"], [("h", None)], ["-", "x"]),       # a lone - is not an option
    (["--"], [], []),
    ([], [], []),
])
def test_djb_rules(argv, opts, rest) -> None:  # type: ignore[no-untyped-def]
    assert scan(argv) == (opts, rest)


@pytest.mark.parametrize("argv, text", [
    (["-hz", "prog"], "illegal option -- z"),
    (["-t"], "option requires an argument -- t"),
    (["-h", "--x"], "illegal option -- -"),
])
def test_errors_carry_the_c_text(argv, text) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Bad) as info:
        scan(argv)
    assert str(info.value) == text


def test_request_words_only_where_an_option_may_stand() -> None:
    with pytest.raises(Bad, match="help"):
        scan(["-h", "--help", "prog"])
    assert scan(["prog", "--help"]) == ([], ["prog", "--help"])
    assert scan(["--", "--help"]) == ([], ["--help"])


def test_options_before_a_bad_letter_come_first() -> None:
    """A command that acts on each option as it comes (rblsmtpd) sees the
    ones before the bad letter, as the C programs do."""
    seen: List[str] = []
    with pytest.raises(Bad):
        for letter, _ in Getopt(["-hv", "-z"], "", "hv", error=Bad):
            seen.append(letter)
    assert seen == ["h", "v"]
