"""A slow RFC 1413 ident server for benchmarks: answers after a fixed delay.

On the internet the ident answer comes from the client's host, late or
never; oidentd on loopback answers in a fraction of a millisecond.  This
server makes the slow case reproducible: it accepts on ``ADDRESS`` port
113 (or ``--port``), reads the query line, waits ``--delay`` seconds
(counted from the query) and answers ``<ports> : USERID : UNIX :
bench``, then closes.  One process, one ``selectors`` loop, any number
of queries waiting at once; it costs almost no CPU, so it does not
compete with the servers under test.

    python3 bench/slow_ident.py ADDRESS [--port 113] [--delay 0.05]

Prints ``ready`` on stdout once listening; stops on SIGTERM or SIGINT.
Dev-only (bench/), not part of the package.
"""

from __future__ import annotations

import argparse
import heapq
import selectors
import signal
import socket
import sys
import time
from typing import Dict, List, Tuple


def serve(address: str, port: int, delay: float) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1024)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    pending: Dict[socket.socket, bytes] = {}
    due: List[Tuple[float, int, socket.socket, bytes]] = []
    serial = 0
    running = [True]

    def stop(_signo: int, _frame: object) -> None:
        running[0] = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    while running[0]:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else 1.0
        for key, _ in sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                pending[conn] = b""
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(512)
            except OSError:
                data = b""
            got = pending.get(sock, b"") + data
            if not data or b"\n" in got or len(got) > 500:
                sel.unregister(sock)
                del pending[sock]
                if not data:
                    sock.close()
                    continue
                ports = got.split(b"\n", 1)[0].strip().replace(b" ", b"")
                answer = ports.replace(b",", b" , ") + b" : USERID : UNIX : bench\r\n"
                serial += 1
                heapq.heappush(due, (time.monotonic() + delay, serial, sock, answer))
            else:
                pending[sock] = got
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, sock, answer = heapq.heappop(due)
            try:
                sock.send(answer)
            except OSError:
                pass
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address")
    parser.add_argument("--port", type=int, default=113)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds before each answer")
    args = parser.parse_args()
    try:
        serve(args.address, args.port, args.delay)
    except OSError as err:
        sys.exit(f"slow_ident: {err}")


if __name__ == "__main__":
    main()
