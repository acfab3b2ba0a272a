"""A digest pass meeting trouble loses nothing and blames no address wrongly: a relay
that refuses us stops the pass (no address turned off), a run of bounces does too, a
mail server that cannot be reached stops it after a few connects, a cancelled pass
gives back what it had not sent, a connection cut after DATA is never sent again, and a
digest keeps its Message-ID when it is sent in a later pass. Real SMTP on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from app.email.digests import DigestReport, run_digests
from app.email.mailer import Mailer
from app.email.schedule import period_key
from app.models import NotificationSettings
from tests.email_smtp import SmtpServer, free_port
from tests.helpers import Client, Node, User, eventually
from tests.test_email_digests import SETTLED, digest_pass, digest_user, digests, text_of

pytest_plugins = ["tests.email_fixtures"]

URL = "/api/v1/me/notification-settings"
_s = NotificationSettings.__table__


async def pass_with(node: Node, **overrides: Any) -> DigestReport:
    """A forced pass with these settings changed (one connection: a known order)."""
    s = node.services.settings.model_copy(update={"email_connections": 1, **overrides})
    return await run_digests(node.services.engine, s, Mailer(s), force=True, settle=SETTLED)


async def users_with_news(
    client: Client, smtp: SmtpServer, n: int, text: str
) -> list[tuple[User, str]]:
    users = [await digest_user(client, smtp) for _ in range(n)]
    b = await client.user()
    for user, _ in users:
        conv = await client.conversation(b, user)
        assert (await client.send(b, conv["id"], text)).status_code == 201
    return users


async def disabled(client: Client, user: User) -> Any:
    return (await client.http.get(URL, headers=user.headers)).json()["email_digest_disabled"]


async def test_relay_refusal_stops_the_pass_and_blames_no_one(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    users = await users_with_news(mail_client, smtp, 2, "relay trouble")
    for _, address in users:
        smtp.sink.fail[address] = [550]
        smtp.sink.fail_text[address] = "5.7.1 relaying denied"
    report = await pass_with(mail_node)
    assert report.aborted and "relay" in report.aborted
    assert report.bounced == 0 and report.failed >= 2
    for user, address in users:
        assert await disabled(mail_client, user) is None
        smtp.sink.fail.pop(address)
    # Everything was given back: the next pass sends it.
    await digest_pass(mail_node, force=True)
    for _, address in users:
        [mail] = digests(smtp, address)
        assert "relay trouble" in text_of(mail, "plain")


async def test_a_run_of_bounces_stops_the_pass(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    users = await users_with_news(mail_client, smtp, 3, "bounce storm")
    for _, address in users:
        smtp.sink.fail[address] = [550]
    report = await pass_with(mail_node, email_abort_after_bounces=2)
    assert report.aborted and "bounces" in report.aborted
    assert report.bounced == 0
    for user, address in users:
        assert await disabled(mail_client, user) is None
        smtp.sink.fail.pop(address)
    await digest_pass(mail_node, force=True)
    for _, address in users:
        assert len(digests(smtp, address)) == 1


async def test_unreachable_server_stops_after_a_few_connects(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    users = await users_with_news(mail_client, smtp, 3, "server was down")
    closed = free_port()  # nothing listens there
    report = await pass_with(
        mail_node, smtp_port=closed, email_max_attempts=1, email_abort_after_connect_failures=2
    )
    assert report.aborted and "connect" in report.aborted
    assert report.sent == 0 and report.failed >= 3
    # The lock was released and every digest given back.
    await digest_pass(mail_node, force=True)
    for _, address in users:
        [mail] = digests(smtp, address)
        assert "server was down" in text_of(mail, "plain")


async def test_cancelled_pass_gives_back_what_it_did_not_send(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    users = await users_with_news(mail_client, smtp, 3, "survives a cancel")
    for _, address in users:
        smtp.sink.fail[address] = [451] * 50
    first = users[0][1]
    task = asyncio.create_task(
        pass_with(mail_node, email_backoff_base_seconds=30, email_backoff_max_seconds=30)
    )
    # Cancelled while the first email waits out its backoff, the others queued.
    await eventually(lambda: smtp.sink.rcpt_attempts.get(first, 0) >= 1, what="a try")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _, address in users:
        smtp.sink.fail.pop(address)
    report = await digest_pass(mail_node, force=True)  # the lock is free again
    assert report.ran
    for _, address in users:
        [mail] = digests(smtp, address)
        assert "survives a cancel" in text_of(mail, "plain")


async def test_cut_after_data_is_not_sent_again(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    [(user, address)] = await users_with_news(mail_client, smtp, 1, "maybe delivered")
    smtp.sink.drop_data.add(address)
    report = await digest_pass(mail_node, force=True)
    assert report.unknown == 1 and report.failed == 0
    smtp.sink.drop_data.discard(address)
    assert len(digests(smtp, address)) == 1  # the server did take it
    await digest_pass(mail_node, force=True)
    assert len(digests(smtp, address)) == 1  # and it is not sent again
    assert await disabled(mail_client, user) is None


async def test_message_id_is_the_same_in_a_later_pass(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    [(user, address)] = await users_with_news(mail_client, smtp, 1, "sent later")
    async with mail_node.services.engine.connect() as conn:
        row = (await conn.execute(select(_s).where(_s.c.user_id == user.id))).one()
    floor = row.digest_covered_until or row.email_verified_at
    smtp.sink.fail[address] = [451] * 10
    assert (await digest_pass(mail_node, force=True)).failed >= 1
    smtp.sink.fail.pop(address)
    await digest_pass(mail_node, force=True)
    [mail] = digests(smtp, address)
    key = f"{period_key(row.email_digest, floor, row.time_zone)}.{int(floor.timestamp() * 1e6)}"
    assert mail["Message-ID"] == f"<digest.{user.id}.{key}@messenger.test>"


async def test_5xx_to_the_message_turns_nothing_off(
    mail_client: Client, mail_node: Node, smtp: SmtpServer
) -> None:
    [(user, address)] = await users_with_news(mail_client, smtp, 1, "refused content")
    smtp.sink.fail_data[address] = 554
    report = await digest_pass(mail_node, force=True)
    assert report.failed == 1 and report.bounced == 0 and report.aborted is None
    assert await disabled(mail_client, user) is None
    # Not accepted, so given back: it goes once the server takes it.
    smtp.sink.fail_data.pop(address)
    await digest_pass(mail_node, force=True)
    [mail] = digests(smtp, address)
    assert "refused content" in text_of(mail, "plain")
