"""``bench/schedlat.py`` reads ``perf sched timehist -w``: which waits
for a CPU it counts as the server's, and whom it blames for them.

The lines are in the layout ``perf sched timehist -w`` prints (time,
CPU, task, wait, scheduling delay, run time; or a wake-up line).
Nothing here runs perf.
"""

from __future__ import annotations

import os
import sys
from typing import List

from tests.util import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import schedlat  # noqa: E402


def wake(cpu: int, waker: str, wakee: str) -> str:
    return (f"   10626.936668 [{cpu:04d}]  {waker:<30}"
            f"                                                    awakened: {wakee}")


def run(cpu: int, task: str, delay_ms: float) -> str:
    return f"   10626.936674 [{cpu:04d}]  {task:<30}      0.106      {delay_ms:.3f}      0.064"


def test_parent_waits_are_blamed_on_the_waker_and_its_cpu() -> None:
    lines: List[str] = [
        wake(1, "oidentd[2424]", "python3[1437]"),
        run(1, "python3[1437]", 0.155),          # on the waker's CPU: "same"
        wake(0, "dnsmasq[15614]", "python3[1437]"),
        run(1, "python3[1437]", 0.020),          # elsewhere: "other"
        wake(0, "python3[2128]", "python3[2128]"),
        run(0, "python3[2128]", 0.500),          # the client: not the server's
    ]
    delays = schedlat.tally(lines, schedlat.Own(1437))
    assert delays == {("oidentd", "same"): [155.0], ("dnsmasq", "other"): [20.0]}


def test_a_c_child_woken_before_its_exec_counts_for_that_run() -> None:
    lines = [
        wake(0, "oidentd[3763]", "tcpserver[3762]"),
        run(1, "true[3762]", 0.030),             # it ran, exec'd: named "true" now
        wake(1, "python3[2128]", "true[3764]"),  # a program: not the server's
        run(1, "true[3764]", 0.300),
    ]
    delays = schedlat.tally(lines, schedlat.Own(2806, "tcpserver"))
    assert delays == {("oidentd", "other"): [30.0]}


def test_a_run_without_a_wake_up_and_a_thread_id_form() -> None:
    lines = [
        run(0, "python3[1437]", 0.090),          # preempted and resumed: no wake-up
        wake(0, "kworker/0:2-eve[1387]", "python3[1437/1437]"),
        run(0, "python3[1437/1437]", 0.004),
    ]
    delays = schedlat.tally(lines, schedlat.Own(1437))
    assert delays == {("kworker/0:2-eve", "same"): [4.0]}
