#!/usr/bin/env python3
"""tcp-env, runnable from a checkout or a copy:
``python3 tcp-env.py program``, with the connection on fd 0 (inetd)."""

import os
import sys

# realpath, not abspath: a symlink to this file must still find ucspi/
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

# Importing ucspi checks the interpreter first (3.9 or newer, else one
# line and exit 111), so this file must stay readable by Python 3.6.

from ucspi.server.tcpenv import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
