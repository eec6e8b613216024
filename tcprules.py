#!/usr/bin/env python3
"""tcprules, runnable from a checkout or a copy:
``python3 tcprules.py rules.cdb rules.tmp``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Importing ucspi checks the interpreter first (3.9 or newer, else one
# line and exit 111), so this file must stay readable by Python 3.6.

from ucspi.tools.tcprules import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
