"""``python3 -m ucspi`` runs tcpserver (or tcprules / tcprulescheck when
started under that name, as from a zipapp symlink)."""

from __future__ import annotations

import os
import sys


def _run() -> int:
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if name.startswith("tcprulescheck"):
        from .tools.tcprulescheck import main as check_main
        return check_main()
    if name.startswith("tcprules"):
        from .tools.tcprules import main as rules_main
        return rules_main()
    from .server import main
    return main()


if __name__ == "__main__":
    sys.exit(_run())
