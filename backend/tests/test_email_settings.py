"""Email settings over the API, against a real SMTP server on loopback: an address is
verified by the link emailed to it; changing it verifies again; forged, expired and
outdated links get a page that says so and change nothing; unsubscribe needs no login
(a confirm page on GET, RFC 8058's one-click POST)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt

from app.db import utcnow
from app.email.links import unsubscribe_url
from app.email.tokens import UNSUBSCRIBE, VERIFY
from tests.email_smtp import SmtpServer, confirm_link, link_in, local
from tests.helpers import SECRET, Client, Node, User, eventually

pytest_plugins = ["tests.email_fixtures"]

URL = "/api/v1/me/notification-settings"


async def set_email(client: Client, user: User, address: str, smtp: SmtpServer) -> str:
    """Set the address; the verification link that arrives for it."""
    before = len(smtp.sink.to(address))
    r = await client.http.put(URL, json={"email": address}, headers=user.headers)
    assert r.status_code == 200, r.text
    assert r.json()["email"] == address and r.json()["email_verified"] is False
    mails = await eventually(
        lambda: len(smtp.sink.to(address)) > before and smtp.sink.to(address),
        what="the verification email",
    )
    return link_in(mails[-1], "/email/verify")


async def test_defaults_and_bad_input(mail_client: Client) -> None:
    a = await mail_client.user()
    r = await mail_client.http.get(URL, headers=a.headers)
    body = r.json()
    assert (body["email"], body["email_verified"], body["email_digest"]) == (None, False, "off")
    assert body["email_digest_disabled"] is None
    for bad in [
        "no-at-sign",
        "a@b",
        "two@@example.com",
        "space in@example.com",
        "ana@example.com\r\nBcc: x@evil.test",
        "<ana@example.com>",
        "ana@-bad.example.com",
        "ana@127.0.0.1",
        "a" * 65 + "@example.com",
        "ü@example.com",
        "",
    ]:
        r = await mail_client.http.put(URL, json={"email": bad}, headers=a.headers)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] in ("invalid_email", "invalid_request", "invalid_field")
    for bad_digest in ["weekly", None, 1]:
        r = await mail_client.http.put(URL, json={"email_digest": bad_digest}, headers=a.headers)
        assert r.status_code == 422, r.text
        assert set(r.json()["error"]) == {"code", "message"}
    # Nothing was written by any of them.
    assert (await mail_client.http.get(URL, headers=a.headers)).json() == body
    r = await mail_client.http.put(URL, json={"email": "x@example.com"})
    assert r.status_code == 401


async def test_verification_and_change(mail_client: Client, smtp: SmtpServer) -> None:
    a = await mail_client.user()
    address = f"{a.username}@Example.COM"
    link = await set_email(mail_client, a, f"{a.username}@example.com", smtp)
    message = smtp.sink.to(f"{a.username}@example.com")[-1]
    assert message["Message-ID"].startswith("<verify.")
    assert message.get_body(("html",)) is not None
    # The domain is kept lower-case; the same address again only resends the link.
    r = await mail_client.http.put(
        URL, json={"email": address, "email_digest": "daily"}, headers=a.headers
    )
    assert r.json()["email"] == f"{a.username}@example.com"
    assert r.json()["email_digest"] == "daily" and r.json()["email_verified"] is False

    # GET and HEAD (mail scanners, link previews) only show the confirm button.
    r = await mail_client.http.head(local(link))
    assert r.status_code == 200
    r = await mail_client.http.get(local(link))
    assert r.status_code == 200 and 'method="post"' in r.text and "Confirm" in r.text
    assert r.headers["referrer-policy"] == "no-referrer"
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_verified"] is False
    r = await mail_client.http.post(local(link))
    assert r.status_code == 200 and "verified" in r.text
    got = (await mail_client.http.get(URL, headers=a.headers)).json()
    assert got["email_verified"] is True and got["email_digest"] == "daily"
    # Following it again is harmless.
    assert (await mail_client.http.post(local(link))).status_code == 200

    # Another address: unverified again, and the old link no longer verifies anything.
    new_link = await set_email(mail_client, a, f"{a.username}.2@example.org", smtp)
    r = await mail_client.http.post(local(link))
    assert r.status_code == 400 and "not valid" in r.text
    assert (await mail_client.http.get(local(link))).status_code == 400
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_verified"] is False
    assert (await confirm_link(mail_client.http, new_link)).status_code == 200
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_verified"] is True

    # Removing the address.
    r = await mail_client.http.put(URL, json={"email": None}, headers=a.headers)
    assert r.json()["email"] is None and r.json()["email_verified"] is False


async def test_forged_and_expired_links_change_nothing(
    mail_client: Client, smtp: SmtpServer
) -> None:
    a = await mail_client.user()
    address = f"{a.username}@example.com"
    link = await set_email(mail_client, a, address, smtp)
    token = urlsplit(link).query.removeprefix("token=")
    now = utcnow()
    claims = {"sub": str(a.id), "em": address, "iat": now}
    forged = jwt.encode({**claims, "aud": VERIFY, "exp": now + timedelta(hours=1)}, "x" * 40)
    expired = jwt.encode({**claims, "aud": VERIFY, "exp": now - timedelta(seconds=5)}, SECRET)
    # An unsubscribe token is not a verification token, nor the other way round.
    other_kind = jwt.encode({**claims, "aud": UNSUBSCRIBE, "exp": now + timedelta(1)}, SECRET)
    for bad in [forged, expired, other_kind, token[:-3], "", "x" * 5000]:
        for method in ("GET", "POST"):
            r = await mail_client.http.request(method, "/email/verify", params={"token": bad})
            assert r.status_code == 400 and "not valid" in r.text, (method, bad[:20])
            assert r.headers["content-type"].startswith("text/html")
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_verified"] is False

    unsubscribe_forged = jwt.encode(
        {**claims, "aud": UNSUBSCRIBE, "exp": now + timedelta(1)}, "y" * 40
    )
    unsubscribe_expired = jwt.encode(
        {**claims, "aud": UNSUBSCRIBE, "exp": now - timedelta(1)}, SECRET
    )
    await mail_client.http.put(URL, json={"email_digest": "hourly"}, headers=a.headers)
    for bad in [unsubscribe_forged, unsubscribe_expired, token]:
        r = await mail_client.http.get("/email/unsubscribe", params={"token": bad})
        assert r.status_code == 400
        r = await mail_client.http.post(
            "/email/unsubscribe",
            params={"token": bad},
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 400 and "not valid" in r.text
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_digest"] == "hourly"


async def test_unsubscribe_without_login(mail_client: Client, mail_node: Node) -> None:
    a = await mail_client.user()
    address = f"{a.username}@example.com"
    r = await mail_client.http.put(
        URL, json={"email": address, "email_digest": "daily"}, headers=a.headers
    )
    assert r.status_code == 200
    link = unsubscribe_url(mail_node.services.settings, a.id, address)
    # GET only asks (mail scanners follow links); it changes nothing.
    r = await mail_client.http.get(local(link))
    assert r.status_code == 200 and "<form" in r.text and 'method="post"' in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_digest"] == "daily"
    # RFC 8058 one-click: a POST to the same URL, no cookie, no token header.
    r = await mail_client.http.post(
        local(link),
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and "Unsubscribed" in r.text
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_digest"] == "off"


async def test_verification_emails_are_rate_limited(mail_client: Client, smtp: SmtpServer) -> None:
    a = await mail_client.user()
    answers = []
    for i in range(6):
        r = await mail_client.http.put(
            URL, json={"email": f"{a.username}.{i}@example.com"}, headers=a.headers
        )
        answers.append(r.status_code)
    assert answers[:3] == [200, 200, 200] and 429 in answers[3:], answers
    refused = answers.index(429)
    # The refused PUT wrote nothing: the address is still the one before it.
    got = (await mail_client.http.get(URL, headers=a.headers)).json()
    assert got["email"] == f"{a.username}.{refused - 1}@example.com"
    assert smtp.sink.to(f"{a.username}.{refused}@example.com") == []


async def test_one_address_is_limited_whoever_asks(mail_client: Client, smtp: SmtpServer) -> None:
    target = f"target.{(await mail_client.user()).username}@example.com"
    answers = []
    users = [await mail_client.user() for _ in range(5)]
    for i, user in enumerate(users):
        # Another account each time, the case changed too: the same mailbox.
        address = target.upper().replace("@EXAMPLE.COM", "@example.com") if i % 2 else target
        r = await mail_client.http.put(URL, json={"email": address}, headers=user.headers)
        answers.append(r)
    codes = [r.status_code for r in answers]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes
    assert int(answers[3].headers["retry-after"]) >= 1
    assert set(answers[3].json()["error"]) == {"code", "message"}
    # Refused: nothing stored for them, and no email sent for them.
    for user in users[3:]:
        assert (await mail_client.http.get(URL, headers=user.headers)).json()["email"] is None
    shouted = target.upper().replace("@EXAMPLE.COM", "@example.com")
    await eventually(
        lambda: len(smtp.sink.to(target)) + len(smtp.sink.to(shouted)) == 3, what="three links"
    )


async def test_old_link_of_the_same_address_set_again(
    mail_client: Client, smtp: SmtpServer
) -> None:
    a = await mail_client.user()
    first, other = f"{a.username}@example.com", f"{a.username}@example.org"
    old_link = await set_email(mail_client, a, first, smtp)
    await set_email(mail_client, a, other, smtp)
    new_link = await set_email(mail_client, a, first, smtp)
    # A, then B, then A: the first link was for an earlier setting of A.
    assert (await mail_client.http.get(local(old_link))).status_code == 400
    assert (await mail_client.http.post(local(old_link))).status_code == 400
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_verified"] is False
    assert (await confirm_link(mail_client.http, new_link)).status_code == 200
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_verified"] is True


async def test_case_of_the_address_is_not_a_new_address(
    mail_client: Client, smtp: SmtpServer
) -> None:
    a = await mail_client.user()
    address = f"Ana.{a.username}@example.com"
    assert (
        await confirm_link(mail_client.http, await set_email(mail_client, a, address, smtp))
    ).status_code == 200
    sent = len(smtp.sink.to(address))
    r = await mail_client.http.put(URL, json={"email": address.lower()}, headers=a.headers)
    assert r.status_code == 200
    assert r.json()["email_verified"] is True and r.json()["email"] == address
    assert len(smtp.sink.to(address)) + len(smtp.sink.to(address.lower())) == sent


async def test_failed_verification_email_is_shown_and_resent(
    mail_client: Client, smtp: SmtpServer
) -> None:
    a = await mail_client.user()
    address = f"{a.username}@example.com"
    smtp.sink.fail[address] = [550]
    r = await mail_client.http.put(URL, json={"email": address}, headers=a.headers)
    assert r.status_code == 200 and r.json()["email_verification_failed"] is None

    async def failure() -> Any:
        got = (await mail_client.http.get(URL, headers=a.headers)).json()
        return got["email_verification_failed"]

    failed = await eventually(failure, what="the recorded failure")
    assert failed["reason"].startswith("550")
    # "Resend link": the same address again, within the limits.
    smtp.sink.fail.pop(address)
    r = await mail_client.http.put(URL, json={"email": address}, headers=a.headers)
    assert r.status_code == 200 and r.json()["email_verification_failed"] is None
    [mail] = await eventually(lambda: smtp.sink.to(address), what="the resent link")
    assert (await confirm_link(mail_client.http, link_in(mail, "/email/verify"))).status_code == 200
