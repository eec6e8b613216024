"""Lookups when the process has no descriptor to spare (issue 7, item 1).

Each case runs ``tests/starve.py`` in a process of its own (it lowers
the file limit): a lookup whose socket cannot be had must wait for one
within its deadline and then answer, or give up through ``abort`` at
the deadline, never report "no answer" at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.util import ROOT

SCRIPT = os.path.join(ROOT, "tests", "starve.py")
EMFILE = 24


def starve(scenario: str) -> dict:
    out = subprocess.run([sys.executable, SCRIPT, scenario], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("kind, answer", [("dns", ["starved.example", None]),
                                          ("ident", ["starved"])])
def test_lookup_waits_for_a_descriptor(kind, answer) -> None:
    got = starve(f"{kind}-retry")
    assert got.get("done") == answer and "abort" not in got
    assert got["at"] >= 0.14          # not before the descriptors were freed (0.15 s)


@pytest.mark.parametrize("kind", ["dns", "ident"])
def test_lookup_gives_up_through_abort_at_its_deadline(kind) -> None:
    got = starve(f"{kind}-abort")
    assert got.get("abort") == EMFILE and "done" not in got
    assert 0.55 <= got["at"] < 6.0    # the deadline (0.6 s), not at once


@pytest.mark.parametrize("kind, failure", [("dns", [None, str(EMFILE)]), ("ident", [None])])
def test_without_abort_the_failure_comes_at_the_deadline(kind, failure) -> None:
    got = starve(f"{kind}-plain")
    assert got.get("done") == failure
    assert 0.55 <= got["at"] < 6.0    # the deadline (0.6 s), not at once
