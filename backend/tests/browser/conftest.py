"""Browser tests of the web client: Debian's Chromium driven by Playwright's async API.

One Chromium for the session; one node on PostgreSQL pointed at the push fakes; a fresh
browser context per user per test (fixtures.py). Where there is no Chromium or no
playwright package, the whole directory is skipped, with the reason in the summary (-rs).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from tests.browser import CHROMIUM


def _unavailable() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "browser tests skipped: the playwright Python package is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


UNAVAILABLE = _unavailable()

if UNAVAILABLE:
    # Each test module is collected as one that skips with the reason, raised from this one
    # line, so the summary folds it into a single line. (A module-level skip in a conftest
    # breaks `pytest tests/browser`: it is loaded before collection starts.)
    class _Unavailable(pytest.Module):
        def collect(self) -> Any:
            pytest.skip(UNAVAILABLE)

    def pytest_pycollect_makemodule(module_path: Path, parent: Any) -> Any:
        return _Unavailable.from_parent(parent, path=module_path)

else:
    from tests.browser.fixtures import (  # noqa: F401  (fixtures, found by name)
        api,
        artifacts,
        browser,
        new_context,
        playwright,
        push_world,
        web_node,
    )
