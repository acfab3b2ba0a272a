"""Browser tests of the web client (see conftest.py)."""

CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium; never `playwright install`
