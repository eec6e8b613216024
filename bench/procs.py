"""What the benchmarks do with the servers they start: start one with
``-1``, stop one by its pid, read its memory and CPU time from ``/proc``;
and compile the C yardsticks they run beside them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

TICK = os.sysconf("SC_CLK_TCK")


def start(argv: List[str], env: Optional[Dict[str, str]] = None
          ) -> Tuple["subprocess.Popen[bytes]", int]:
    """Start a server with ``-1`` and port 0; return it and its port."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"server did not start: {argv}")
    return proc, int(line)


def stop(proc: Any, wait: float = 5.0) -> None:
    """SIGTERM to the one process we started (by its pid), SIGKILL if it
    is still there after ``wait`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) of ``pid``, in s."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2:].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def compile_c(source: str, binary: str) -> Optional[str]:
    """``cc -O2 -o binary source``; ``binary``, or None without a C
    compiler or when it does not compile (its messages on stderr)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    proc = subprocess.run([cc, "-O2", "-o", binary, source],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout.decode(errors="replace"))
        return None
    return binary
