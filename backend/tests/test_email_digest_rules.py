"""What a digest leaves out, as a push would (push.decision): messages from someone the
user blocked, conversations muted, snoozed or push-disabled, `notify: mentions` but for
messages naming them, deleted messages, conversations they left; and what the "sender"
preview shows. Against a real SMTP server on loopback."""

from __future__ import annotations

from datetime import timedelta

from app.db import utcnow
from tests.email_smtp import SmtpServer
from tests.helpers import Client, Node, User
from tests.test_email_digests import digest_pass, digest_user, digests, text_of

pytest_plugins = ["tests.email_fixtures"]

CONV = "/api/v1/messenger/conversations"


async def test_left_out_as_pushes_are(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    c = mail_client
    a, address = await digest_user(c, smtp)
    b = await c.user(display_name="Bea")
    pest = await c.user(display_name="Pest")

    async def group(title: str, *others: User) -> str:
        return str((await c.conversation(b, a, *others, title=title))["id"])

    async def setting(cid: str, **values: object) -> None:
        r = await c.http.put(f"{CONV}/{cid}/settings", json=values, headers=a.headers)
        assert r.status_code == 200, r.text

    control = str((await c.conversation(b, a))["id"])
    await c.send(b, control, "the control message")

    blocked = await group("Blocked", pest)
    assert (await c.http.put(f"/api/v1/me/blocks/{pest.id}", headers=a.headers)).status_code == 200
    assert (await c.send(pest, blocked, "from the blocked one")).status_code == 201

    mentions = await group("Mentions")
    await setting(mentions, notify="mentions")
    await c.send(b, mentions, "chatter without a name")
    assert (await c.send(b, mentions, f"look @{a.username}")).json()["mentions"] == [a.id]
    await c.send(b, mentions, "more chatter")
    mentions_only_chatter = await group("Chatter")
    await setting(mentions_only_chatter, notify="mentions")
    await c.send(b, mentions_only_chatter, "nothing for you")

    muted = await group("Muted")
    await setting(muted, muted=True)
    snoozed = await group("Snoozed")
    await setting(snoozed, mute_until=(utcnow() + timedelta(hours=2)).isoformat())
    push_off = await group("Push off")
    await setting(push_off, push_enabled=False)
    for cid in (muted, snoozed, push_off):
        assert (await c.send(b, cid, "quiet please")).status_code == 201

    deleted = await group("Deleted")
    message = (await c.send(b, deleted, "taken back")).json()
    r = await c.http.delete(f"{CONV}/{deleted}/messages/{message['id']}", headers=b.headers)
    assert r.status_code == 200, r.text
    left = await group("Left")
    await c.send(b, left, "after you went")
    r = await c.http.delete(f"{CONV}/{left}/participants/{a.id}", headers=a.headers)
    assert r.status_code == 200, r.text

    await digest_pass(mail_node, force=True)
    [mail] = digests(smtp, address)
    plain = text_of(mail, "plain")
    assert mail["Subject"] == "2 new messages", plain
    assert f"?conversation={control}" in plain and "the control message" in plain
    assert f"?conversation={mentions}" in plain and f"look @{a.username}" in plain
    assert "chatter" not in plain and "nothing for you" not in plain
    for cid in (blocked, mentions_only_chatter, muted, snoozed, push_off, deleted, left):
        assert f"?conversation={cid}" not in plain, cid
    for text in ("from the blocked one", "quiet please", "taken back", "after you went"):
        assert text not in plain


async def test_sender_preview(mail_client: Client, mail_node: Node, smtp: SmtpServer) -> None:
    a, address = await digest_user(mail_client, smtp, preview="sender")
    b = await mail_client.user(display_name="Visible Name")
    group = await mail_client.conversation(b, a, title="Visible Title")
    await mail_client.send(b, group["id"], "the hidden words")
    await mail_client.send(b, group["id"], "more hidden words")
    await digest_pass(mail_node, force=True)
    [mail] = digests(smtp, address)
    for part in (text_of(mail, "plain"), text_of(mail, "html")):
        assert "Visible Name • Visible Title" in part and "2 new messages" in part
        assert "hidden words" not in part
