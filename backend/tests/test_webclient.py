"""The web client's files: served with a strict Content-Security-Policy."""

from __future__ import annotations

from app.webclient import CONTENT_SECURITY_POLICY
from tests.helpers import Client


async def test_the_page_runs_only_its_own_scripts(client: Client) -> None:
    for path in ("/", "/app.js", "/sw.js"):
        r = await client.http.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    # The API's answers are JSON, not pages: they need no policy.
    r = await client.http.get("/health")
    assert "content-security-policy" not in r.headers
