"""Shared pytest set-up: make the checkout importable.  Fixtures live in
the ``tests/fix_*.py`` modules and are imported by the tests that use
them."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
