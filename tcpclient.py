#!/usr/bin/env python3
"""tcpclient, runnable from a checkout or a copy:
``python3 tcpclient.py host port program [args...]``."""

import os
import sys

# realpath, not abspath: a symlink to this file (in /usr/local/bin, say)
# must still find ucspi/ beside the real file, also under python3 -I / -P
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

# Importing ucspi checks the interpreter first (3.9 or newer, else one
# line and exit 111), so this file must stay readable by Python 3.6.

from ucspi.client import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
