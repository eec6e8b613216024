"""The pure DNSBL pieces: rblsmtpd's dialogue, the lists and the
decision (:mod:`ucspi.rbl.dialogue`, :mod:`ucspi.rbl.lists`)."""

from __future__ import annotations

import pytest

from ucspi.errors import UsageError
from ucspi.rbl.dialogue import LINE_MAX, Dialogue, refusal_line
from ucspi.rbl.lists import (TEMPORARY, Answer, Decision, ListSpec, a_answer, allow_answer,
                             decide, from_environ, parse_lists, query_name, reversed_ip,
                             rblsmtpd_variable, rule_rblsmtpd, txt_answer)



def test_dialogue_answers_as_rblsmtpd() -> None:
    talk = Dialogue(b"451 go away")
    assert talk.start() == b"220 rblsmtpd.local\r\n"
    out = talk.feed(b"helo x\r\nEHLO y\nMaIl FROM:<a>\r\nrcpt to:<b>\r\ndata\r\nnoop\r\n"
                    b"rset\r\nvrfy x\r\n\r\nhelo\0junk\r\nhelo x\0y\r\n")
    ok, no = b"250 rblsmtpd.local\r\n", b"451 go away\r\n"
    assert out == ok + ok + ok + no + no + ok + ok + no + no + no + ok
    assert talk.feed(b"qu") == b"" and not talk.done            # half a line waits
    assert talk.feed(b"it now\r\nhelo\r\n") == b"221 rblsmtpd.local\r\n"
    assert talk.done and talk.feed(b"helo\r\n") == b""


def test_dialogue_without_talk_and_long_lines() -> None:
    talk = Dialogue(b"553 no", talk=False)
    assert talk.start() == b"553 no\r\n" and talk.done
    long = Dialogue(b"451 x", greeting="mx.example")
    assert long.feed(b"helo " + b"x" * (10 * LINE_MAX)) == b""
    assert long.feed(b"y" * LINE_MAX + b"\r\nquit\r\n") == b"250 mx.example\r\n221 mx.example\r\n"


def test_refusal_line_is_cut_and_cleaned() -> None:
    assert refusal_line(451, b"a\x01b\xffc") == b"451 a?b?c"
    assert refusal_line(553, b"x" * 300) == b"553 " + b"x" * 200


def test_lists_and_names() -> None:
    assert parse_lists("zen.example  bl.test:listed_by_%IP% :x") == [
        ListSpec("zen.example"), ListSpec("bl.test", "listed by %IP%")]
    assert parse_lists("a:b_c", underscores=False) == [ListSpec("a", "b_c")]
    assert reversed_ip("192.0.2.1") == "1.2.0.192"
    assert reversed_ip("::ffff:192.0.2.1") == "1.2.0.192"
    assert reversed_ip("2001:db8::1") == "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2"
    assert reversed_ip("not an address") is None
    assert query_name("1.2.0.192", "zen.example.") == "1.2.0.192.zen.example"


def test_answers_spamhaus_errors_are_failures() -> None:
    assert txt_answer([]) == Answer(False, False)
    assert txt_answer([b"listed", b" twice"]) == Answer(True, False, b"listed twice")
    assert txt_answer([b"Error: open resolver; x"]).error
    assert a_answer([b"\x7f\x00\x00\x02"], "no %IP%", "1.2.3.4") == \
        Answer(True, False, b"no 1.2.3.4")
    assert a_answer([b"\x7f\xff\xff\xfe"], "x", "1.2.3.4").error
    assert allow_answer([b"\x7f\x00\x00\x02"]).listed
    assert allow_answer([b"\x7f\xff\xff\xff"]).error


LISTS = [ListSpec("one"), ListSpec("two")]
HIT = Answer(True, False, b"bad")
CLEAN = Answer(False, False)


@pytest.mark.parametrize("answers, allow, closed, bounce, expected", [
    ([CLEAN, CLEAN], [], False, False, Decision(False)),
    ([CLEAN, HIT], [], False, False, Decision(True, 451, b"bad", "two")),
    ([CLEAN, HIT], [], False, True, Decision(True, 553, b"bad", "two")),
    ([None, HIT], [], False, True, Decision(True, 451, b"bad", "two")),     # a failure: 451
    ([CLEAN, HIT], [Answer(True, False)], False, False, Decision(False)),   # anti-lists win
    ([None, CLEAN], [], False, False, Decision(False)),                     # fail open
    ([None, CLEAN], [], True, False, Decision(True, 451, TEMPORARY)),       # fail closed
    ([HIT, CLEAN], [None], False, False, Decision(False)),                  # anti failed: open
    ([HIT, CLEAN], [None], True, True, Decision(True, 451, b"bad", "one")),
])
def test_decide(answers: list, allow: list, closed: bool, bounce: bool,  # type: ignore[type-arg]
                expected: Decision) -> None:
    assert decide(LISTS, answers, allow, closed, bounce) == expected


def test_rblsmtpd_variable() -> None:
    assert rblsmtpd_variable(None, "1.2.3.4") is None
    assert rblsmtpd_variable("", "1.2.3.4") == Decision(False)
    assert rblsmtpd_variable("-bye %IP%", "1.2.3.4") == Decision(True, 553, b"bye 1.2.3.4")
    assert rblsmtpd_variable("later", "1.2.3.4") == Decision(True, 451, b"later")
    assert rule_rblsmtpd([(b"RBLSMTPD", b"x"), (b"RBLSMTPD", None)]) is None
    assert rule_rblsmtpd([(b"X", b"1"), (b"RBLSMTPD", b"")]) == ""


def test_settings_from_the_environment_and_rules() -> None:
    s = from_environ({"DNSBL": "a b:c", "DNSBL_ALLOW": "ok", "DNSBL_TIMEOUT": "5",
                      "DNSBL_FAIL": "closed", "DNSBL_BOUNCE": "y",
                      "DNSBL_DIALOGUE_TIMEOUT": "0", "RBLGREETING": "mx"})
    assert (s.lists, s.allow, s.timeout, s.fail_closed, s.bounce, s.dialogue_timeout,
            s.greeting) == ([ListSpec("a"), ListSpec("b", "c")], ["ok"], 5, True, True, 0, "mx")
    assert s.lookups() == 3
    for bad in ({"DNSBL_TIMEOUT": "x"}, {"DNSBL_FAIL": "maybe"},
                {"DNSBL_DIALOGUE_TIMEOUT": "-1"}):
        with pytest.raises(UsageError):
            from_environ(bad)
    warned: list = []   # type: ignore[type-arg]
    ruled = s.with_rule([(b"DNSBL", b""), (b"DNSBL_TIMEOUT", b"soon")], warned.append)
    assert ruled.lists == [] and ruled.timeout == 5 and len(warned) == 1
    assert s.with_rule([(b"OTHER", b"1")], warned.append) is s
