"""The operator's email commands (`make email-digests`, `make test-email TO=...`) against
a real SMTP server on loopback."""

from __future__ import annotations

import pytest

from app.email.commands import email_digests_now, send_test_email_to_user
from tests.email_smtp import SmtpServer, confirm_link, link_in
from tests.helpers import Client, eventually, make_settings, start_node

pytest_plugins = ["tests.email_fixtures"]

URL = "/api/v1/me/notification-settings"


async def test_digest_pass_and_test_email(
    postgresql_url: str, smtp: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hourly digests, far from due: the command sends anyway (every period due).
    settings = make_settings(postgresql_url, **smtp.settings())
    node = await start_node(settings)
    client = Client(node)
    try:
        a, b = await client.user(), await client.user()
        address = f"{a.username}@example.com"
        r = await client.http.put(
            URL, json={"email": address, "email_digest": "hourly"}, headers=a.headers
        )
        assert r.status_code == 200
        [verify] = await eventually(lambda: smtp.sink.to(address), what="the link")
        r = await confirm_link(client.http, link_in(verify, "/email/verify"))
        assert r.status_code == 200
        conv = await client.conversation(b, a)
        await client.send(b, conv["id"], "while you were away")
        capsys.readouterr()

        # The pass covers messages up to a couple of seconds ago: wait for that.
        async def sent() -> bool:
            await email_digests_now(settings)
            return len(smtp.sink.to(address)) == 2

        await eventually(sent, within=15, every=0.5, what="the digest")
        assert "digests sent" in capsys.readouterr().out
        digest = smtp.sink.to(address)[-1]
        assert "while you were away" in str(digest.get_body(("plain",)).get_content())

        assert await send_test_email_to_user(settings, a.username) == 0
        assert capsys.readouterr().out.startswith("sent")
        assert smtp.sink.to(address)[-1]["Subject"] == "Test email"
        assert await send_test_email_to_user(settings, "nobody-of-that-name") == 1
        off = make_settings(postgresql_url)
        assert await email_digests_now(off) == 1
        assert "SMTP_HOST" in capsys.readouterr().err
    finally:
        await client.close()
        await node.stop()
