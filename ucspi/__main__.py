"""``python3 -m ucspi`` runs tcpserver (or tcprules / tcprulescheck /
tcpclient / tcp-env / rblsmtpd when started under that name, as from a
zipapp symlink).

The interpreter has been checked by ``ucspi/__init__.py`` already.
"""

from __future__ import annotations

import sys

from . import command_name


def _run() -> int:
    command = command_name(sys.argv[0] if sys.argv else "")
    if command == "tcprulescheck":
        from .tools.tcprulescheck import main as check_main
        return check_main()
    if command == "tcprules":
        from .tools.tcprules import main as rules_main
        return rules_main()
    if command == "tcp-env":
        from .server.tcpenv import main as env_main
        return env_main()
    if command == "rblsmtpd":
        from .tools.rblsmtpd import main as rbl_main
        return rbl_main()
    if command == "tcpclient":
        from .client import main as client_main
        return client_main()
    from .server import main
    return main()


if __name__ == "__main__":
    sys.exit(_run())
