"""Benchmarks: `python -m bench` (or `make bench`). See bench/README.md."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "backend"
# The app and its test fakes are imported from backend/ (app.auth, tests.fakes).
if str(BACKEND) not in sys.path:
    sys.path.insert(0, str(BACKEND))
