"""Operator commands: `python -m app.cli cleanup | vapid-keys | test-push USERNAME |
admin USERNAME [--revoke]`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import sys

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select, update

from app.config import Settings
from app.db import make_engine
from app.email.commands import email_digests_now, send_test_email_to_user
from app.messenger.cleanup import run_cleanup
from app.messenger.models import DeviceToken
from app.messenger.push.base import Device
from app.messenger.push.delivery import RetryPolicy, deliver
from app.messenger.push.notification import operator_test_notification
from app.messenger.push.providers import start_providers
from app.messenger.storage import build_storage
from app.models import NotificationSettings, User


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def vapid_keys() -> str:
    """A fresh VAPID key pair, as lines for `.env`."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_numbers().private_value.to_bytes(32, "big")
    public = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return (
        f"VAPID_PRIVATE_KEY={b64url(private)}\n"
        f"VAPID_PUBLIC_KEY={b64url(public)}\n"
        "VAPID_SUBJECT=mailto:admin@example.com\n"
    )


async def cleanup(settings: Settings) -> int:
    engine = make_engine(settings.effective_database_url)
    storage = build_storage(settings)
    try:
        await storage.start()
        report = await run_cleanup(engine, settings, storage)
    finally:
        await storage.stop()
        await engine.dispose()
    if not report.ran:
        print("another node is running the cleanup; nothing done")
    else:
        print(
            f"removed {report.devices_removed} devices, {report.attempts_removed} push records, "
            f"{report.sessions_removed} sessions, {report.uploads_removed} uploads"
        )
    return 0


async def send_test_push(settings: Settings, username: str) -> int:
    """Send a test notification to every active device of a user; print each outcome."""
    engine = make_engine(settings.effective_database_url)
    providers = await start_providers(settings)
    policy = RetryPolicy(1, 0, 0, settings.push_timeout_seconds)
    try:
        async with engine.connect() as conn:
            user_id = await conn.scalar(select(User.id).where(User.username == username.lower()))
            if user_id is None:
                print(f"no user {username!r}", file=sys.stderr)
                return 1
            rows = (
                await conn.execute(
                    select(DeviceToken).where(
                        DeviceToken.user_id == user_id, DeviceToken.is_active.is_(True)
                    )
                )
            ).all()
            locale = await conn.scalar(
                select(NotificationSettings.locale).where(NotificationSettings.user_id == user_id)
            )
        if not rows:
            print(f"{username} has no active device")
            return 1
        notification = operator_test_notification(settings.public_base_url, locale or "en")
        failed = 0
        for row in rows:
            device = Device(row.id, row.user_id, row.token, row.platform, row.provider)
            provider = providers.get(device.provider)
            if provider is None:
                print(f"{device.id} {device.provider}: provider is off")
                failed += 1
                continue
            result = await deliver(provider, device, notification, policy, asyncio.Semaphore(1))
            print(f"{device.id} {device.provider}: {result.outcome} {result.error or ''}".rstrip())
            failed += result.outcome != "delivered"
        return 1 if failed else 0
    finally:
        for provider in providers.values():
            await provider.close()
        await engine.dispose()


async def set_admin(settings: Settings, username: str, is_admin: bool) -> int:
    """Grant (or revoke) the admin role; 1 and a message for an unknown user."""
    engine = make_engine(settings.effective_database_url)
    try:
        async with engine.begin() as conn:
            # Bots are left out: a bot's token is a script's credential, never an admin's.
            user_id = await conn.scalar(
                update(User)
                .where(User.username == username.strip().lower(), User.is_bot.is_(False))
                .values(is_admin=is_admin)
                .returning(User.id)
            )
            is_bot = user_id is None and await conn.scalar(
                select(User.id).where(User.username == username.strip().lower())
            )
    finally:
        await engine.dispose()
    if is_bot:
        print(f"{username!r} is a bot; a bot cannot be an admin", file=sys.stderr)
        return 1
    if user_id is None:
        print(f"no user {username!r}", file=sys.stderr)
        return 1
    logging.getLogger(__name__).warning(
        "admin role %s user=%s", "granted" if is_admin else "revoked", user_id
    )
    print(f"{username} is {'now' if is_admin else 'no longer'} an admin")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("cleanup", help="remove stale devices and old push records now")
    commands.add_parser("vapid-keys", help="print a fresh VAPID key pair for .env")
    push = commands.add_parser("test-push", help="send a test push to a user's devices")
    push.add_argument("username")
    commands.add_parser("email-digests", help="run one email digest pass now, all periods due")
    mail = commands.add_parser("test-email", help="send a test email to a user's address")
    mail.add_argument("username")
    admin = commands.add_parser("admin", help="make a user an admin (or --revoke it)")
    admin.add_argument("username")
    admin.add_argument("--revoke", action="store_true", help="take the admin role back")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if args.command == "vapid-keys":
        print(vapid_keys(), end="")
        return 0
    settings = Settings()
    if args.command == "cleanup":
        return asyncio.run(cleanup(settings))
    if args.command == "email-digests":
        return asyncio.run(email_digests_now(settings))
    if args.command == "test-email":
        return asyncio.run(send_test_email_to_user(settings, args.username))
    if args.command == "admin":
        return asyncio.run(set_admin(settings, args.username, not args.revoke))
    return asyncio.run(send_test_push(settings, args.username))


if __name__ == "__main__":
    sys.exit(main())
