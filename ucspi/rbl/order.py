"""rblsmtpd's decision in command-line order, as djb 0.88 makes it
(design: rblsmtpd).  Pure: the options and the answers in, the decision
out; :mod:`.ordered` asks the lists.

djb's rblsmtpd acts on its options one by one, as it parses them:
``-b``/``-B`` and ``-c``/``-C`` change a flag, ``-r`` asks a list at
once with the flags as they are at that moment, ``-a`` asks an
anti-list; the first list or anti-list that decides ends the lookups.
So ``-r bl -b`` refuses with 451 (``-b`` came too late), ``-r bl -a
ok`` refuses a client both name while ``-a ok -r bl`` lets it in, and a
failed lookup only counts (must-not-bounce, ``-c``) if it came before
the deciding one.  :func:`evaluate` replays that walk over answers that
were asked for all at once, and can tell as soon as the answers that
have come in are enough: the same decision as djb's in every case,
whatever order the answers arrive in.

What an answer means (:func:`meaning`):

* ``-r base``: listed when ``<reversed ip>.base`` has TXT records whose
  text, joined, is not empty (djb's test; an empty text is no listing),
  the text being the refusal; a text beginning ``Error:`` is a failure;
* ``-r base:message`` (IndiMail): listed when it has an A record, with
  ``message`` (``%IP%`` replaced) as the refusal;
* ``-a base``: lets the client in when it has an A record;
* an A record in 127.255.255.0/24 is a failure, never a listing
  (Spamhaus' query errors), as is no answer at all.

A failure of a list sets must-not-bounce (every refusal is then a 451)
and, with ``-c``, refuses with ``451 temporary RBL lookup error``; a
failure of an anti-list sets must-not-bounce and, without ``-c``, lets
the client in.
"""

from __future__ import annotations

from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .lists import (ALLOW, TEMPORARY, Answer, Decision, ListSpec, a_answer, allow_answer,
                    txt_answer)

#: the flag letters, and what each sets: (``bounce``, ``fail_closed``)
FLAGS = {"b": ("bounce", True), "B": ("bounce", False),
         "c": ("fail_closed", True), "C": ("fail_closed", False)}


class Step(NamedTuple):
    """One option that matters to the decision, in command-line order.

    Attributes:
        letter: ``b``, ``B``, ``c``, ``C`` (a flag), ``r`` (a list) or
            ``a`` (an anti-list).
        spec: the list of ``-r``, or the anti-list of ``-a`` (its
            ``message`` is None).
    """

    letter: str
    spec: Optional[ListSpec] = None

    @property
    def asks(self) -> bool:
        """Whether this step is a lookup."""
        return self.letter in ("r", "a")

    @property
    def wants_txt(self) -> bool:
        """A TXT lookup (``-r base``) rather than an A lookup."""
        return self.letter == "r" and self.spec is not None and self.spec.message is None


class Outcome(NamedTuple):
    """The decision, and the query errors seen on the way.

    Attributes:
        decision: refuse (with a code and a text) or let in.
        errors: ``(base, text)`` of each lookup djb's walk consulted
            that answered with a query error (to be logged).
    """

    decision: Decision
    errors: Tuple[Tuple[str, bytes], ...] = ()


def meaning(step: Step, records: Sequence[bytes], ip: str) -> Answer:
    """What a lookup's records (TXT texts or A addresses) say.

    Args:
        step: the ``-r`` or ``-a`` step asked.
        records: the records found (``[]``: none, or no such name).
        ip: the client's address, for ``%IP%``.
    """
    assert step.spec is not None
    if step.letter == "a":
        return allow_answer(records)
    if step.spec.message is not None:
        return a_answer(records, step.spec.message, ip)
    return txt_answer(records)              # an empty text lists nobody (djb)


def evaluate(steps: Sequence[Step], preset: Optional[Decision],
             answers: Mapping[int, Optional[Answer]], final: bool) -> Optional[Outcome]:
    """djb's walk over the options.

    Args:
        steps: the options, in order.
        preset: the decision ``$RBLSMTPD`` made (None: unset), which
            stops every lookup.
        answers: the answers come in so far, by step index; None for a
            lookup that failed without an answer.
        final: no more answers will come: a step still missing is a
            failure.

    Returns:
        The outcome, or None if it depends on an answer still to come.
    """
    if preset is not None:
        return Outcome(preset)
    flags = {"bounce": False, "fail_closed": False}
    must_not_bounce = False
    errors: List[Tuple[str, bytes]] = []

    def outcome(decision: Decision) -> Outcome:
        return Outcome(decision, tuple(errors))

    for index, step in enumerate(steps):
        if step.letter in FLAGS:
            name, value = FLAGS[step.letter]
            flags[name] = value
            continue
        if index not in answers and not final:
            return None
        assert step.spec is not None
        answer = answers.get(index)
        if answer is not None and answer.error:
            errors.append((step.spec.base, answer.text))
        if answer is None or answer.error:
            must_not_bounce = True
            if step.letter == "r" and flags["fail_closed"]:
                return outcome(Decision(True, 451, TEMPORARY))
            if step.letter == "a" and not flags["fail_closed"]:
                return outcome(ALLOW)
        elif answer.listed and step.letter == "a":
            return outcome(ALLOW)
        elif answer.listed:
            code = 553 if flags["bounce"] and not must_not_bounce else 451
            return outcome(Decision(True, code, answer.text, step.spec.base))
    return outcome(ALLOW)


def lookups(steps: Sequence[Step]) -> List[int]:
    """The indexes of the steps that are lookups."""
    return [index for index, step in enumerate(steps) if step.asks]
