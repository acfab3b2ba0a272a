"""Missed-message digests against a real SMTP server on loopback (STARTTLS and AUTH):
what one says and how (parsed back with the standard library's parser), that it goes
once per message, never for what was read or opened from a push, on the schedule and
outside quiet hours, retried on 4xx, and turned off (and said so) on a 5xx bounce."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import insert, select

from app.db import make_engine, utcnow
from app.email.digests import DigestReport, run_digests
from app.email.mailer import Mailer
from app.messenger.models import Notification
from app.models import NotificationSettings
from tests.email_smtp import SmtpServer, confirm_link, link_in, local
from tests.helpers import Client, Node, User, eventually

pytest_plugins = ["tests.email_fixtures"]

URL = "/api/v1/me/notification-settings"
# The node's clock is the tests' clock: messages sent just now count.
SETTLED = timedelta(0)


async def digest_user(
    client: Client, smtp: SmtpServer, digest: str = "daily", **settings: Any
) -> tuple[User, str]:
    """A user with a verified address and digests on; (user, address)."""
    user = await client.user()
    address = f"{user.username}@example.com"
    r = await client.http.put(
        URL, json={"email": address, "email_digest": digest, **settings}, headers=user.headers
    )
    assert r.status_code == 200, r.text
    mails = await eventually(lambda: smtp.sink.to(address), what="the verification email")
    r = await confirm_link(client.http, link_in(mails[0], "/email/verify"))
    assert r.status_code == 200
    return user, address


async def digest_pass(node: Node, **kw: Any) -> DigestReport:
    s = node.services
    kw.setdefault("settle", SETTLED)
    return await run_digests(s.engine, s.settings, Mailer(s.settings), **kw)


def digests(smtp: SmtpServer, address: str) -> list[EmailMessage]:
    return [m for m in smtp.sink.to(address) if m["Message-ID"].startswith("<digest.")]


def text_of(message: EmailMessage, kind: str) -> str:
    part = message.get_body((kind,))
    assert part is not None
    return str(part.get_content())


async def test_digest_content_headers_and_once(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    a, address = await digest_user(mail_client, smtp)
    bea = await mail_client.user(display_name="Bea")
    cid = await mail_client.user(display_name="Cid")
    direct = await mail_client.conversation(a, bea)
    group = await mail_client.conversation(cid, a, bea, title="Trip")
    # Their own message is not news to them (and sending one reads what came before).
    await mail_client.send(a, direct["id"], "my own message")
    assert (await mail_client.send(bea, direct["id"], "first")).status_code == 201
    assert (await mail_client.send(bea, direct["id"], "see <b>this</b>")).status_code == 201
    assert (await mail_client.send(cid, group["id"], "tickets booked")).status_code == 201

    await digest_pass(mail_node, force=True)
    [mail] = digests(smtp, address)
    assert mail["To"] == address and mail["From"] == "Messenger <noreply@messenger.test>"
    assert mail["Subject"] == "3 new messages", text_of(mail, "plain")
    assert mail["Message-ID"].startswith(f"<digest.{a.id}.")
    assert mail["Message-ID"].endswith("@messenger.test>")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Unsubscribe"].startswith("<http") and mail["List-Unsubscribe"].endswith(">")
    assert mail.get_content_type() == "multipart/alternative"
    plain, html = text_of(mail, "plain"), text_of(mail, "html")
    for part in (plain, html):
        assert "Bea" in part and "Cid • Trip" in part and "tickets booked" in part
        assert f"?conversation={direct['id']}" in part and f"?conversation={group['id']}" in part
        assert "first" not in part  # the newest message of each conversation stands for it
        assert "my own message" not in part
    assert "2 new messages: see <b>this</b>" in plain
    assert "see &lt;b&gt;this&lt;/b&gt;" in html and "<b>this</b>" not in html

    # Nothing new: no email, however often the pass runs.
    await digest_pass(mail_node, force=True)
    await digest_pass(mail_node, force=True)
    assert len(digests(smtp, address)) == 1
    # Something new: the next digest holds that alone, under a Message-ID of its own.
    await mail_client.send(cid, group["id"], "one more")
    await digest_pass(mail_node, force=True)
    first, second = digests(smtp, address)
    assert second["Subject"] == "1 new message" and second["Message-ID"] != first["Message-ID"]
    assert "one more" in text_of(second, "plain") and "Bea" not in text_of(second, "plain")

    # The header's one-click unsubscribe works without a login.
    r = await mail_client.http.post(
        local(mail["List-Unsubscribe"].strip("<>")),
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    assert (await mail_client.http.get(URL, headers=a.headers)).json()["email_digest"] == "off"
    await mail_client.send(cid, group["id"], "after unsubscribing")
    await digest_pass(mail_node, force=True)
    assert len(digests(smtp, address)) == 2


async def test_preview_none_hides_who_and_what(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    a, address = await digest_user(mail_client, smtp, preview="none", locale="de")
    b = await mail_client.user(display_name="Secretive Sender")
    group = await mail_client.conversation(b, a, title="Hidden Plans")
    await mail_client.send(b, group["id"], "the secret text")
    await mail_client.send(b, group["id"], "more secret text")
    await digest_pass(mail_node, force=True)
    [mail] = digests(smtp, address)
    assert mail["Subject"] == "2 neue Nachrichten"
    for part in (text_of(mail, "plain"), text_of(mail, "html")):
        assert "secret" not in part and "Secretive" not in part and "Hidden" not in part
        assert "Du hast 2 neue Nachrichten" in part and f"?conversation={group['id']}" in part


async def test_no_email_when_read_or_opened(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    a, address = await digest_user(mail_client, smtp)
    b = await mail_client.user()
    read_here = await mail_client.conversation(a, b)
    pushed = await mail_client.conversation(b, a, title="Pushed")
    # Unread and never opened: the control, so a pass that mails nothing fails here.
    control = await mail_client.conversation(b, a, title="Control")
    await mail_client.send(b, control["id"], "still unread")
    r = await mail_client.send(b, read_here["id"], "read in the app")
    seq = r.json()["seq"]
    r = await mail_client.send(b, pushed["id"], "opened from the push")
    opened_id = r.json()["id"]
    r = await mail_client.http.post(
        f"/api/v1/messenger/conversations/{read_here['id']}/read",
        json={"seq": seq},
        headers=a.headers,
    )
    assert r.status_code == 200
    async with mail_node.services.engine.begin() as conn:
        await conn.execute(
            insert(Notification.__table__).values(
                id=str(uuid.uuid4()),
                user_id=a.id,
                kind="message",
                conversation_id=pushed["id"],
                message_id=opened_id,
                title="t",
                body="b",
                created_at=utcnow(),
                opened_at=utcnow(),
                opened_how="tap",
            )
        )
    table = NotificationSettings.__table__
    async with mail_node.services.engine.connect() as conn:
        before = await conn.scalar(
            select(table.c.digest_covered_until).where(table.c.user_id == a.id)
        )
    await digest_pass(mail_node, force=True)
    [mail] = digests(smtp, address)
    plain = text_of(mail, "plain")
    assert mail["Subject"] == "1 new message", plain
    assert f"?conversation={control['id']}" in plain and "still unread" in plain
    assert "read in the app" not in plain and "opened from the push" not in plain
    assert f"?conversation={read_here['id']}" not in plain
    assert f"?conversation={pushed['id']}" not in plain
    # This user's cursor moved on: the pass looked at them.
    async with mail_node.services.engine.connect() as conn:
        after = await conn.scalar(
            select(table.c.digest_covered_until).where(table.c.user_id == a.id)
        )
    assert before is not None and after is not None and after > before


async def test_schedule_and_quiet_hours(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    a, address = await digest_user(mail_client, smtp, digest="hourly", time_zone="Asia/Tokyo")
    b = await mail_client.user()
    conv = await mail_client.conversation(b, a)
    await mail_client.send(b, conv["id"], "ping")
    table = NotificationSettings.__table__
    async with mail_node.services.engine.connect() as conn:
        due = await conn.scalar(select(table.c.next_digest_at).where(table.c.user_id == a.id))
    assert due is not None and due > utcnow() and due.minute == 0
    # Not yet due: nothing (a restarted node reads the same schedule from the database).
    await digest_pass(mail_node)
    assert digests(smtp, address) == []
    await digest_pass(mail_node, now=due + timedelta(seconds=1))
    assert len(digests(smtp, address)) == 1
    async with mail_node.services.engine.connect() as conn:
        after = await conn.scalar(select(table.c.next_digest_at).where(table.c.user_id == a.id))
    assert after == due + timedelta(hours=1)

    # Inside quiet hours (an hour either side of now): moved on, nothing sent.
    now = utcnow()
    window = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=1)).strftime("%H:%M"),
    }
    c, quiet_address = await digest_user(mail_client, smtp, quiet_hours=window)
    conv = await mail_client.conversation(b, c)
    await mail_client.send(b, conv["id"], "at night")
    report = await digest_pass(mail_node, force=True)
    assert report.quiet >= 1 and digests(smtp, quiet_address) == []


async def test_retries_on_4xx_and_turns_off_on_5xx(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    a, flaky = await digest_user(mail_client, smtp)
    c, dead = await digest_user(mail_client, smtp)
    b = await mail_client.user()
    for user in (a, c):
        conv = await mail_client.conversation(b, user)
        await mail_client.send(b, conv["id"], "hello")
    smtp.sink.fail[flaky] = [451, 421]
    smtp.sink.fail[dead] = [550]
    report = await digest_pass(mail_node, force=True)
    assert report.bounced >= 1
    assert len(digests(smtp, flaky)) == 1 and smtp.sink.rcpt_attempts[flaky] >= 3
    assert digests(smtp, dead) == []
    got = (await mail_client.http.get(URL, headers=c.headers)).json()
    assert got["email_digest"] == "off" and got["email"] == dead
    assert got["email_digest_disabled"]["reason"].startswith("550")
    # Off means off: the next pass does not try the address again.
    tried = smtp.sink.rcpt_attempts[dead]
    await mail_client.send(b, conv["id"], "again")
    await digest_pass(mail_node, force=True)
    assert smtp.sink.rcpt_attempts[dead] == tried
    # Turning digests on again clears the notice.
    r = await mail_client.http.put(URL, json={"email_digest": "daily"}, headers=c.headers)
    assert r.json()["email_digest_disabled"] is None


async def test_two_nodes_send_once(
    mail_client: Client, mail_node: Node, smtp: SmtpServer, db_url: str
) -> None:
    users = [await digest_user(mail_client, smtp) for _ in range(3)]
    b = await mail_client.user()
    for user, _ in users:
        conv = await mail_client.conversation(b, user)
        await mail_client.send(b, conv["id"], "for both nodes")
    s = mail_node.services.settings
    other = make_engine(s.effective_database_url)
    try:
        reports = await asyncio.gather(
            run_digests(mail_node.services.engine, s, Mailer(s), force=True, settle=SETTLED),
            run_digests(other, s, Mailer(s), force=True, settle=SETTLED),
        )
    finally:
        await other.dispose()
    assert all(r.failed == 0 for r in reports)
    for _, address in users:
        assert len(digests(smtp, address)) == 1


async def test_failed_send_gives_the_messages_back(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    a, address = await digest_user(mail_client, smtp)
    b = await mail_client.user()
    conv = await mail_client.conversation(b, a)
    await mail_client.send(b, conv["id"], "kept for later")
    # 4xx every time: the retries run out and nothing was accepted.
    smtp.sink.fail[address] = [451] * 10
    report = await digest_pass(mail_node, force=True)
    assert report.failed >= 1 and digests(smtp, address) == []
    smtp.sink.fail.pop(address)
    await digest_pass(mail_node, force=True)
    [mail] = digests(smtp, address)
    assert "kept for later" in text_of(mail, "plain")
