"""/openapi.json and /docs: every REST route is described, the description is valid
OpenAPI 3.1, and every documented operation answers, on a real node, a body its
description allows for the status it gives."""

from __future__ import annotations

import ast
import io
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote, urlsplit

import orjson
import pytest
from openapi_spec_validator import validate as validate_openapi
from PIL import Image
from sqlalchemy import update
from starlette.routing import Mount, Route, WebSocketRoute

import app
from app.admin_push_log import OUTCOME_REASON
from app.admin_stats import MAX_DAYS
from app.email.schedule import PERIODS
from app.main import create_app
from app.messenger.action_tokens import issue_action_token
from app.messenger.conversations import CreateConversationBody, SettingsBody
from app.messenger.devices import PROVIDERS_FOR
from app.messenger.message_changes import MAX_CHANGES_LIMIT
from app.messenger.models import ScheduledMessage
from app.messenger.participants import READ_ONLY_TYPES
from app.messenger.push.base import Outcome
from app.messenger.push.decision import ALL_PROVIDERS
from app.messenger.push.decision_log import REASONS
from app.messenger.push.history import KINDS, OPENED_HOW
from app.messenger.push.image_links import issue_image_token
from app.messenger.push.notification import PREVIEWS
from app.messenger.push.open_tokens import issue_open_token
from app.messenger.roles import ROLES
from app.messenger.search import DEFAULT_LIMIT as SEARCH_DEFAULT
from app.messenger.search import MAX_LIMIT as SEARCH_MAX
from app.messenger.search import MAX_QUERY_CHARS
from app.models import User as UserRow
from app.openapi.api import operation_of
from app.openapi.builder import (
    AUTH_ERRORS,
    BODY_ERRORS,
    EXCLUDED,
    QUERY_ERRORS,
    build_document,
)
from app.webclient import CONTENT_SECURITY_POLICY
from tests import schema_check
from tests.fakes.webpush import FakePushService, make_vapid_keys
from tests.helpers import SECRET, Client, Node, User, make_settings, start_node

MESSENGER = "/api/v1/messenger"
VAPID = make_vapid_keys()
CONVERSATIONS = f"{MESSENGER}/conversations"


@pytest.fixture(scope="module")
async def webpush() -> AsyncIterator[FakePushService]:
    """Web Push on, at a fake push service on loopback: no push leaves the machine."""
    async with FakePushService(VAPID.public) as fake:
        yield fake


@pytest.fixture(scope="module")
async def api_node(sqlite_url: str, webpush: FakePushService) -> AsyncIterator[Node]:
    settings = make_settings(
        sqlite_url,
        # Announcements are rate limited per admin far below what the samples make.
        announcement_rate_per_hour=1000,
        announcement_burst=100,
        vapid_private_key=VAPID.private_raw,
        vapid_public_key=VAPID.public,
        vapid_subject="mailto:ops@example.com",
        web_push_allow_any_endpoint=True,
    )
    node = await start_node(settings)
    yield node
    await node.stop()


@pytest.fixture(scope="module")
async def api(api_node: Node) -> AsyncIterator[Client]:
    c = Client(api_node)
    yield c
    await c.close()


@pytest.fixture(scope="module")
async def document(api: Client) -> dict[str, Any]:
    r = await api.http.get("/openapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    return body


def _all_routes() -> list[tuple[str, str, Any]]:
    """(method, path, endpoint) of every route of a fresh app, through Mounts: HTTP
    routes once per method (HEAD aside), the WebSocket and mounted apps as "*"."""
    app = create_app(make_settings("sqlite+aiosqlite:///:memory:"))
    found: list[tuple[str, str, Any]] = []

    def walk(routes: Any, prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount) and route.routes:
                walk(route.routes, prefix + route.path)
            elif isinstance(route, Mount):
                found.append(("*", prefix + route.path or "/", route.app))
            elif isinstance(route, Route):
                for method in sorted((route.methods or set()) - {"HEAD"}):
                    found.append((method, prefix + route.path, route.endpoint))
            elif isinstance(route, WebSocketRoute):
                found.append(("*", prefix + route.path, route.endpoint))

    walk(app.routes, "")
    return found


def _api_routes() -> list[tuple[str, str, Any]]:
    return [r for r in _all_routes() if r[1].startswith("/api/")]


def test_every_api_route_is_documented() -> None:
    missing = [f"{m} {p}" for m, p, endpoint in _api_routes() if operation_of(endpoint) is None]
    assert not missing, f"routes without @documented: {missing}"


async def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_every_route_is_in_the_document_or_excluded_with_a_reason(
    document: dict[str, Any],
) -> None:
    described = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    for method, path, _ in _all_routes():
        if path in EXCLUDED:
            continue
        assert (method, re.sub(r"\{(\w+):\w+\}", r"{\1}", path)) in described, (method, path)
    assert {"/ws", "/"} <= set(EXCLUDED) and all(EXCLUDED.values())
    assert not any(path in document["paths"] for path in EXCLUDED)


async def test_the_document_is_built_once_per_app(api: Client) -> None:
    first, second = await api.http.get("/openapi.json"), await api.http.get("/openapi.json")
    assert first.content == second.content
    (route,) = [r for r in api.node.app.routes if getattr(r, "path", "") == "/openapi.json"]
    assert isinstance(route, Route)
    assert route.endpoint.__self__._body == first.content  # kept, not built per request
    assert build_document(api.node.app.routes, api.node.app.state.settings) == first.json()


# --- Sample calls ------------------------------------------------------------------------


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


@dataclass
class World:
    """The accounts and things the sample calls act on."""

    api: Client
    admin: User
    bob: User
    carol: User
    group: str
    direct: str
    message: dict[str, Any]
    upload: dict[str, Any]
    device_id: str
    notification_id: str
    webpush: FakePushService
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Call:
    """One request: the path with its parameters filled in, and the status it must get."""

    status: int
    path: str
    user: User | None = None
    json: Any = None
    params: dict[str, Any] | None = None
    files: dict[str, Any] | None = None


@pytest.fixture(scope="module")
async def world(api: Client, api_node: Node, webpush: FakePushService) -> World:
    admin, bob, carol = await api.user(), await api.user(), await api.user()
    async with api_node.services.engine.begin() as conn:
        await conn.execute(update(UserRow).where(UserRow.id == admin.id).values(is_admin=True))
    group = (await api.conversation(admin, bob, carol, title="sample group"))["id"]
    direct = (await api.conversation(admin, bob))["id"]
    r = await api.http.post(
        f"{MESSENGER}/uploads", files={"file": ("red.png", _png())}, headers=admin.headers
    )
    assert r.status_code == 201, r.text
    upload = r.json()
    r = await api.send(admin, group, "hello @" + bob.username, attachments=[upload["id"]])
    assert r.status_code == 201, r.text
    r = await api.http.post(
        f"{MESSENGER}/devices/register",
        json={"device_token": webpush.subscribe(), "platform": "web", "provider": "web_push"},
        headers=admin.headers,
    )
    assert r.status_code == 201, r.text
    device_id = str(r.json()["device_token_id"])
    r = await api.http.post("/api/v1/me/devices/test-push", headers=admin.headers)
    assert r.status_code == 202, r.text
    return World(
        api,
        admin,
        bob,
        carol,
        group,
        direct,
        (await api.messages(admin, group))[-1],
        upload,
        device_id,
        r.json()["id"],
        webpush,
    )


async def _fresh_login(w: World, user: User) -> User:
    r = await w.api.http.post(
        "/api/v1/auth/login", json={"username": user.username, "password": "correct horse battery"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return User(
        user.id,
        user.username,
        body["access_token"],
        user.display_name,
        body["refresh_token"],
        body["session_id"],
    )


def _later(seconds: int = 3600) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


Sample = Callable[[World], Awaitable[list[Call]]]
SAMPLES: dict[str, Sample] = {}


def sample(key: str) -> Callable[[Sample], Sample]:
    def add(fn: Sample) -> Sample:
        SAMPLES[key] = fn
        return fn

    return add


@sample("POST /api/v1/auth/register")
async def _register(w: World) -> list[Call]:
    name = f"s{uuid.uuid4().hex[:10]}"
    body = {"username": name, "password": "correct horse battery"}
    return [Call(201, "/api/v1/auth/register", json=body), Call(409, "", json=body)]


@sample("POST /api/v1/auth/login")
async def _login(w: World) -> list[Call]:
    good = {"username": w.bob.username, "password": "correct horse battery"}
    bad = {"username": w.bob.username, "password": "wrong wrong wrong"}
    return [Call(200, "/api/v1/auth/login", json=good), Call(401, "", json=bad)]


@sample("GET /api/v1/me")
async def _me(w: World) -> list[Call]:
    return [Call(200, "/api/v1/me"), Call(401, "", user=User(0, "", "bad", ""))]


@sample("GET /api/v1/users")
async def _users(w: World) -> list[Call]:
    return [Call(200, "/api/v1/users", params={"query": w.bob.username[:4]})]


@sample("GET /api/v1/users/{user_id}")
async def _user(w: World) -> list[Call]:
    return [Call(200, f"/api/v1/users/{w.bob.id}"), Call(404, "/api/v1/users/999999999")]


@sample("POST /api/v1/auth/refresh")
async def _refresh(w: World) -> list[Call]:
    other = await _fresh_login(w, w.carol)
    return [Call(200, "/api/v1/auth/refresh", json={"refresh_token": other.refresh_token})]


@sample("POST /api/v1/auth/logout")
async def _logout(w: World) -> list[Call]:
    return [Call(200, "/api/v1/auth/logout", user=await _fresh_login(w, w.carol))]


@sample("GET /api/v1/me/sessions")
async def _sessions(w: World) -> list[Call]:
    return [Call(200, "/api/v1/me/sessions")]


@sample("DELETE /api/v1/me/sessions")
async def _revoke_others(w: World) -> list[Call]:
    return [Call(200, "/api/v1/me/sessions", user=await _fresh_login(w, w.carol))]


@sample("DELETE /api/v1/me/sessions/{session_id}")
async def _revoke(w: World) -> list[Call]:
    other = await _fresh_login(w, w.carol)
    path = f"/api/v1/me/sessions/{other.session_id}"
    return [Call(200, path, user=await _fresh_login(w, w.carol)), Call(404, path)]


@sample("GET /api/v1/me/notification-settings")
async def _get_notification_settings(w: World) -> list[Call]:
    return [Call(200, "/api/v1/me/notification-settings")]


@sample("PUT /api/v1/me/notification-settings")
async def _put_notification_settings(w: World) -> list[Call]:
    body = {
        "time_zone": "Europe/Paris",
        "quiet_hours": {"start": "22:00", "end": "07:00", "allow_mentions": True},
        "push_delay_seconds": 30,
        "preview": "sender",
        # No SMTP on this node: the verification email fails after the answer, which
        # already holds the address (unverified) and the digest period.
        "email": f"{w.admin.username}@example.com",
        "email_digest": "daily",
    }
    path = "/api/v1/me/notification-settings"
    return [Call(200, path, json=body), Call(422, path, json={"time_zone": "Mars/Base"})]


@sample("GET /api/v1/messenger/conversations")
async def _list_conversations(w: World) -> list[Call]:
    return [Call(200, CONVERSATIONS)]


@sample("POST /api/v1/messenger/conversations")
async def _create_conversation(w: World) -> list[Call]:
    body = {"type": "group", "participant_ids": [w.bob.id], "title": "another"}
    again = {"type": "direct", "participant_ids": [w.bob.id]}
    return [
        Call(201, CONVERSATIONS, json=body),
        Call(200, CONVERSATIONS, json=again),
        Call(422, CONVERSATIONS, json={"type": "circle", "participant_ids": []}),
    ]


@sample("GET /api/v1/messenger/conversations/{conversation_id}")
async def _get_conversation(w: World) -> list[Call]:
    return [
        Call(200, f"{CONVERSATIONS}/{w.group}"),
        Call(404, f"{CONVERSATIONS}/{uuid.uuid4()}"),
    ]


@sample("PATCH /api/v1/messenger/conversations/{conversation_id}")
async def _rename(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}"
    return [Call(200, path, json={"title": "renamed"}), Call(403, path, w.bob, {"title": "x"})]


@sample("GET /api/v1/messenger/conversations/{conversation_id}/messages")
async def _list_messages(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}/messages"
    return [
        Call(200, path, params={"limit": 50}),
        Call(200, path, params={"changed_after": "0"}),
        Call(403, path, await w.api.user()),
    ]


@sample("POST /api/v1/messenger/conversations/{conversation_id}/messages")
async def _post_message(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}/messages"
    sent = {"content": "a sample", "client_msg_id": uuid.uuid4().hex}
    return [
        Call(201, path, json=sent),
        Call(200, path, json=sent),
        Call(202, path, json={"content": "later", "send_at": _later()}),
        Call(422, path, json={"content": 5}),
    ]


@sample("GET /api/v1/messenger/conversations/{conversation_id}/settings")
async def _get_conversation_settings(w: World) -> list[Call]:
    return [Call(200, f"{CONVERSATIONS}/{w.group}/settings")]


@sample("PUT /api/v1/messenger/conversations/{conversation_id}/settings")
async def _put_conversation_settings(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}/settings"
    return [Call(200, path, json={"muted": False, "mute_until": _later(), "notify": "mentions"})]


@sample("POST /api/v1/messenger/conversations/{conversation_id}/read")
async def _read(w: World) -> list[Call]:
    return [Call(200, f"{CONVERSATIONS}/{w.group}/read", json={"seq": 1})]


@sample("GET /api/v1/messenger/scheduled")
async def _list_scheduled(w: World) -> list[Call]:
    return [Call(200, f"{MESSENGER}/scheduled")]


@sample("DELETE /api/v1/messenger/scheduled/{scheduled_id}")
async def _cancel_scheduled(w: World) -> list[Call]:
    r = await w.api.send(w.admin, w.group, "to cancel", send_at=_later())
    assert r.status_code == 202, r.text
    path = f"{MESSENGER}/scheduled/{r.json()['scheduled_id']}"
    r = await w.api.send(w.admin, w.group, "sent already", send_at=_later())
    assert r.status_code == 202, r.text
    sent = r.json()["scheduled_id"]
    async with w.api.node.services.engine.begin() as conn:
        await conn.execute(
            update(ScheduledMessage).where(ScheduledMessage.id == sent).values(status="sent")
        )
    return [
        Call(200, path),
        Call(404, f"{MESSENGER}/scheduled/{uuid.uuid4()}"),
        Call(409, f"{MESSENGER}/scheduled/{sent}"),
    ]


@sample("POST /api/v1/me/reminders")
async def _create_reminder(w: World) -> list[Call]:
    body = {"message_id": w.message["id"], "remind_at": _later()}
    return [Call(201, "/api/v1/me/reminders", json=body)]


@sample("GET /api/v1/me/reminders")
async def _list_reminders(w: World) -> list[Call]:
    return [Call(200, "/api/v1/me/reminders")]


@sample("DELETE /api/v1/me/reminders/{reminder_id}")
async def _cancel_reminder(w: World) -> list[Call]:
    body = {"message_id": w.message["id"], "remind_at": _later()}
    r = await w.api.http.post("/api/v1/me/reminders", json=body, headers=w.admin.headers)
    assert r.status_code == 201, r.text
    return [
        Call(200, f"/api/v1/me/reminders/{r.json()['id']}"),
        Call(404, f"/api/v1/me/reminders/{uuid.uuid4()}"),
    ]


async def _own_message(w: World, content: str = "to change") -> str:
    r = await w.api.send(w.admin, w.group, content)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@sample("PATCH /api/v1/messenger/conversations/{conversation_id}/messages/{message_id}")
async def _edit(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}/messages/{await _own_message(w)}"
    return [Call(200, path, json={"content": "changed"}), Call(403, path, w.bob, {"content": "x"})]


@sample("DELETE /api/v1/messenger/conversations/{conversation_id}/messages/{message_id}")
async def _delete(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}/messages/{await _own_message(w)}"
    return [Call(200, path), Call(404, f"{CONVERSATIONS}/{w.group}/messages/{uuid.uuid4()}")]


REACTION = (
    "/api/v1/messenger/conversations/{conversation_id}/messages/{message_id}/reactions/{emoji}"
)


@sample(f"PUT {REACTION}")
async def _react(w: World) -> list[Call]:
    return [Call(200, f"{CONVERSATIONS}/{w.group}/messages/{w.message['id']}/reactions/👍")]


@sample(f"DELETE {REACTION}")
async def _unreact(w: World) -> list[Call]:
    return [Call(200, f"{CONVERSATIONS}/{w.group}/messages/{w.message['id']}/reactions/👍")]


@sample("POST /api/v1/messenger/conversations/{conversation_id}/participants")
async def _add_members(w: World) -> list[Call]:
    newcomer = await w.api.user()
    path = f"{CONVERSATIONS}/{w.group}/participants"
    return [Call(200, path, json={"user_ids": [newcomer.id]})]


@sample("DELETE /api/v1/messenger/conversations/{conversation_id}/participants/{user_id}")
async def _remove_member(w: World) -> list[Call]:
    leaver = await w.api.user()
    path = f"{CONVERSATIONS}/{w.group}/participants"
    r = await w.api.http.post(path, json={"user_ids": [leaver.id]}, headers=w.admin.headers)
    assert r.status_code == 200, r.text
    return [Call(200, f"{path}/{leaver.id}"), Call(404, f"{path}/{leaver.id}")]


@sample("PATCH /api/v1/messenger/conversations/{conversation_id}/participants/{user_id}")
async def _set_role_patch(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}/participants/{w.carol.id}"
    return [Call(200, path, json={"role": "admin"})]


@sample("PUT /api/v1/messenger/conversations/{conversation_id}/participants/{user_id}")
async def _set_role_put(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}/participants/{w.carol.id}"
    return [Call(200, path, json={"role": "member"}), Call(422, path, json={"role": "king"})]


@sample("GET /api/v1/me/blocks")
async def _list_blocks(w: World) -> list[Call]:
    return [Call(200, "/api/v1/me/blocks")]


@sample("PUT /api/v1/me/blocks/{user_id}")
async def _block(w: World) -> list[Call]:
    stranger = await w.api.user()
    w.extra["blocked"] = stranger
    return [Call(200, f"/api/v1/me/blocks/{stranger.id}")]


@sample("DELETE /api/v1/me/blocks/{user_id}")
async def _unblock(w: World) -> list[Call]:
    stranger = w.extra.get("blocked") or await w.api.user()
    return [Call(200, f"/api/v1/me/blocks/{stranger.id}")]


@sample("GET /api/v1/messenger/search")
async def _search(w: World) -> list[Call]:
    return [Call(200, f"{MESSENGER}/search", params={"q": "hello", "limit": 5})]


@sample("POST /api/v1/messenger/uploads")
async def _upload(w: World) -> list[Call]:
    return [
        Call(201, f"{MESSENGER}/uploads", files={"file": ("a.png", _png())}),
        Call(201, f"{MESSENGER}/uploads", files={"file": ("notes.txt", b"plain text")}),
    ]


@sample("GET /api/v1/messenger/uploads/{upload_id}/content")
async def _upload_content(w: World) -> list[Call]:
    return [
        Call(200, f"{MESSENGER}/uploads/{w.upload['id']}/content"),
        Call(404, f"{MESSENGER}/uploads/{uuid.uuid4()}/content"),
    ]


@sample("GET /api/v1/messenger/uploads/{upload_id}/thumbnail")
async def _upload_thumbnail(w: World) -> list[Call]:
    return [Call(200, f"{MESSENGER}/uploads/{w.upload['id']}/thumbnail")]


@sample("GET /api/v1/push-images/{token}")
async def _push_image(w: World) -> list[Call]:
    token = issue_image_token(SECRET, w.upload["id"], int(time.time()) + 600)
    return [Call(200, f"/api/v1/push-images/{token}"), Call(404, "/api/v1/push-images/nonsense")]


def _action_token(w: World) -> str:
    return issue_action_token(SECRET, w.admin.id, w.device_id, w.group, w.admin.session_id)


@sample("POST /api/v1/messenger/notification-actions/reply")
async def _action_reply(w: World) -> list[Call]:
    body = {"action_token": _action_token(w), "content": "from the notification"}
    bad = {"action_token": "nonsense", "content": "x"}
    path = f"{MESSENGER}/notification-actions/reply"
    return [Call(201, path, json=body), Call(401, path, json=bad)]


@sample("POST /api/v1/messenger/notification-actions/read")
async def _action_read(w: World) -> list[Call]:
    body = {"action_token": _action_token(w), "seq": 1}
    return [Call(200, f"{MESSENGER}/notification-actions/read", json=body)]


@sample("GET /api/v1/me/notifications")
async def _notifications(w: World) -> list[Call]:
    return [Call(200, "/api/v1/me/notifications", params={"limit": 10})]


@sample("GET /api/v1/me/notifications/{id}")
async def _notification(w: World) -> list[Call]:
    return [
        Call(200, f"/api/v1/me/notifications/{w.notification_id}"),
        Call(404, f"/api/v1/me/notifications/{uuid.uuid4()}"),
    ]


@sample("POST /api/v1/me/notifications/{id}/opened")
async def _opened(w: World) -> list[Call]:
    path = f"/api/v1/me/notifications/{w.notification_id}/opened"
    nobody = User(0, "", "", "")
    # The open token a test push carries (it names this notification and device).
    token = issue_open_token(SECRET, w.admin.id, w.device_id, w.notification_id, w.admin.session_id)
    by_token = {"how": "background", "action_token": token}
    return [
        Call(200, path, json={"how": "click"}),
        Call(200, path, nobody, by_token),
        Call(401, path, nobody, {"how": "click", "action_token": "nonsense"}),
        Call(422, path, json={"how": "psychic"}),
    ]


@sample("POST /api/v1/me/devices/test-push")
async def _test_push(w: World) -> list[Call]:
    return [Call(202, "/api/v1/me/devices/test-push"), Call(409, "", w.bob)]


@sample("POST /api/v1/notifications/test")
async def _test_push_old(w: World) -> list[Call]:
    return [Call(202, "/api/v1/notifications/test")]


@sample("DELETE /api/v1/me/notifications/{id}")
async def _dismiss(w: World) -> list[Call]:
    return [Call(200, f"/api/v1/me/notifications/{w.notification_id}")]


@sample("DELETE /api/v1/me/notifications")
async def _dismiss_all(w: World) -> list[Call]:
    return [Call(200, "/api/v1/me/notifications")]


@sample("GET /api/v1/admin/stats")
async def _stats(w: World) -> list[Call]:
    return [Call(200, "/api/v1/admin/stats", params={"days": 7}), Call(403, "", w.bob)]


@sample("GET /api/v1/admin/push-log")
async def _push_log(w: World) -> list[Call]:
    return [Call(200, "/api/v1/admin/push-log", params={"user_id": w.admin.id, "limit": 10})]


@sample("GET /api/v1/admin/users")
async def _admin_users(w: World) -> list[Call]:
    return [Call(200, "/api/v1/admin/users", params={"q": w.bob.username[:5]})]


@sample("GET /api/v1/admin/users/{user_id}")
async def _admin_user(w: World) -> list[Call]:
    return [Call(200, f"/api/v1/admin/users/{w.admin.id}"), Call(404, "/api/v1/admin/users/0")]


@sample("POST /api/v1/admin/announcements")
async def _announce(w: World) -> list[Call]:
    body = {"title": "Hello", "content": "a sample announcement", "user_ids": [w.bob.id]}
    return [Call(202, "/api/v1/admin/announcements", json=body)]


@sample("GET /api/v1/admin/announcements/{announcement_id}")
async def _announcement(w: World) -> list[Call]:
    body = {"title": "Hello", "content": "another", "user_ids": [w.carol.id]}
    r = await w.api.http.post("/api/v1/admin/announcements", json=body, headers=w.admin.headers)
    assert r.status_code == 202, r.text
    return [
        Call(200, f"/api/v1/admin/announcements/{r.json()['id']}"),
        Call(404, f"/api/v1/admin/announcements/{uuid.uuid4()}"),
    ]


@sample("POST /api/v1/messenger/devices/register")
async def _register_device(w: World) -> list[Call]:
    body = {"device_token": w.webpush.subscribe(), "platform": "web", "provider": "web_push"}
    path = f"{MESSENGER}/devices/register"
    bot = await _bot(w)
    as_bot = User(bot["id"], bot["username"], bot["token"], "")
    return [Call(201, path, json=body), Call(200, path, json=body), Call(403, path, as_bot, body)]


@sample("GET /api/v1/messenger/devices")
async def _devices(w: World) -> list[Call]:
    return [Call(200, f"{MESSENGER}/devices")]


@sample("DELETE /api/v1/messenger/devices/{device_token}")
async def _unregister_device(w: World) -> list[Call]:
    # A Web Push subscription: JSON holding an endpoint URL, so '/' in the path.
    token = w.webpush.subscribe()
    body = {"device_token": token, "platform": "web", "provider": "web_push"}
    r = await w.api.http.post(f"{MESSENGER}/devices/register", json=body, headers=w.bob.headers)
    assert r.status_code == 201, r.text
    path = f"{MESSENGER}/devices/{quote(token, safe='')}"
    return [Call(200, path, w.bob), Call(404, path, w.bob)]


@sample("GET /api/v1/messenger/push/vapid-public-key")
async def _vapid(w: World) -> list[Call]:
    # 404 (Web Push off) needs a node without VAPID keys: this one has them.
    return [Call(200, f"{MESSENGER}/push/vapid-public-key")]


async def _bot(w: World) -> dict[str, Any]:
    body = {"username": f"bot{uuid.uuid4().hex[:8]}", "display_name": "Sample bot"}
    r = await w.api.http.post("/api/v1/me/bots", json=body, headers=w.admin.headers)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


@sample("POST /api/v1/me/bots")
async def _create_bot(w: World) -> list[Call]:
    body = {"username": f"bot{uuid.uuid4().hex[:8]}"}
    return [Call(201, "/api/v1/me/bots", json=body), Call(409, "", json=body)]


@sample("GET /api/v1/me/bots")
async def _list_bots(w: World) -> list[Call]:
    await _bot(w)
    return [Call(200, "/api/v1/me/bots")]


@sample("POST /api/v1/me/bots/{bot_id}/token")
async def _rotate_bot(w: World) -> list[Call]:
    bot = await _bot(w)
    return [Call(200, f"/api/v1/me/bots/{bot['id']}/token"), Call(404, "", w.bob)]


@sample("DELETE /api/v1/me/bots/{bot_id}")
async def _delete_bot(w: World) -> list[Call]:
    bot = await _bot(w)
    return [Call(200, f"/api/v1/me/bots/{bot['id']}"), Call(404, "")]


async def _webhook(w: World) -> dict[str, Any]:
    path = f"{CONVERSATIONS}/{w.group}/webhooks"
    r = await w.api.http.post(path, json={"name": "sample"}, headers=w.admin.headers)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


@sample("POST /api/v1/messenger/conversations/{conversation_id}/webhooks")
async def _create_webhook(w: World) -> list[Call]:
    path = f"{CONVERSATIONS}/{w.group}/webhooks"
    return [Call(201, path, json={"name": "ci"}), Call(403, path, w.bob, {"name": "x"})]


@sample("GET /api/v1/messenger/conversations/{conversation_id}/webhooks")
async def _list_webhooks(w: World) -> list[Call]:
    await _webhook(w)
    return [Call(200, f"{CONVERSATIONS}/{w.group}/webhooks")]


@sample("DELETE /api/v1/messenger/conversations/{conversation_id}/webhooks/{hook_id}")
async def _revoke_webhook(w: World) -> list[Call]:
    hook = await _webhook(w)
    path = f"{CONVERSATIONS}/{w.group}/webhooks/{hook['id']}"
    return [Call(200, path), Call(404, path)]


@sample("POST /api/v1/hooks/{hook_id}/{secret}")
async def _post_to_webhook(w: World) -> list[Call]:
    path = urlsplit((await _webhook(w))["url"]).path
    nobody = User(0, "", "", "")
    return [
        Call(200, path, nobody, {"content": "deployed"}),
        Call(404, f"/api/v1/hooks/{uuid.uuid4()}/nope", nobody, {"content": "x"}),
    ]


@sample("GET /health")
async def _health(w: World) -> list[Call]:
    return [Call(200, "/health")]


@sample("GET /metrics")
async def _metrics(w: World) -> list[Call]:
    return [Call(200, "/metrics")]


def _operations(document: dict[str, Any]) -> list[str]:
    return [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    ]


async def test_every_operation_has_a_sample(document: dict[str, Any]) -> None:
    operations = _operations(document)
    assert sorted(set(operations) - set(SAMPLES)) == [], "operations without a sample call"
    assert sorted(set(SAMPLES) - set(operations)) == [], "samples of no documented operation"


def _check_body(document: dict[str, Any], key: str, status: int, response: Any) -> None:
    method, path = key.split(" ", 1)
    documented = document["paths"][path][method.lower()]["responses"]
    assert str(status) in documented, f"{key} answered {status}, not documented: {response.text}"
    content = documented[str(status)].get("content")
    if not content:
        assert not response.content, f"{key} {status} documents no body but sent one"
        return
    media_type = response.headers.get("content-type", "").split(";")[0]
    if "application/json" in content:
        assert media_type == "application/json", (key, status, media_type)
        check = schema_check.session_check()
        problems = check.problems(key, status, media_type, response.json())
        assert not problems, f"{key} {status}: {problems}"
    else:
        (documented_type,) = content
        if documented_type != "*/*":
            prefix = documented_type.removesuffix("*")
            assert media_type.startswith(prefix), (key, status, media_type, documented_type)
        assert response.content, f"{key} {status} sent no body"


async def test_every_operation_answers_what_it_documents(
    document: dict[str, Any], world: World
) -> None:
    """For each operation in the document, sample calls (success and the usual refusals)
    on a real node; each status must be documented and its body valid against it."""
    checked = 0
    for key in _operations(document):
        method, _ = key.split(" ", 1)
        previous = ""
        for call in await SAMPLES[key](world):
            path = call.path or previous
            previous = path
            user = call.user or world.admin
            r = await world.api.http.request(
                method,
                path,
                json=call.json,
                params=call.params,
                files=call.files,
                headers=user.headers if user.token else {},
            )
            assert r.status_code == call.status, f"{key} {path}: {r.status_code} {r.text[:300]}"
            _check_body(document, key, r.status_code, r)
            checked += 1
    assert checked >= len(SAMPLES)


async def test_docs_page_loads_the_vendored_viewer_under_the_policy(api: Client) -> None:
    r = await api.http.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    page = r.text
    # No inline script: every <script> names a file of this origin.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son\w+=", page), "inline event handler"
    sources = re.findall(r'<(?:script|link)[^>]*\s(?:src|href)="(/[^"]+)"', page)
    assert "/vendor/swagger-ui/swagger-ui-bundle.js" in sources
    assert "/docs.js" in sources
    for source in sources:
        got = await api.http.get(source)
        assert got.status_code == 200, source
        assert got.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    starter = (await api.http.get("/docs.js")).text
    assert '"/openapi.json"' in starter
    for name in ("LICENSE", "NOTICE", "README.md"):
        assert (await api.http.get(f"/vendor/swagger-ui/{name}")).status_code == 200


async def test_bad_calls_answer_documented_errors(document: dict[str, Any], world: World) -> None:
    """Without a token, and with a body that is no JSON, not an object, or of the wrong
    fields: each operation answers a documented status (an error body for a 4xx), never
    a 500."""
    nobody = {"Authorization": "Bearer not-a-token"}
    seen = 0
    for key in _operations(document):
        method, template = key.split(" ", 1)
        operation = document["paths"][template][method.lower()]
        path = (await SAMPLES[key](world))[0].path
        attempts: list[dict[str, Any]] = []
        if operation["security"]:
            attempts.append({"headers": nobody})
        if "application/json" in operation.get("requestBody", {}).get("content", {}):
            json_type = {"content-type": "application/json"}
            attempts += [
                {"headers": world.admin.headers | json_type, "content": b"{not json"},
                {"headers": world.admin.headers | json_type, "content": b"[1, 2]"},
                {"headers": world.admin.headers, "json": {"content": 7, "title": ["x"]}},
            ]
        for attempt in attempts:
            r = await world.api.http.request(method, path, **attempt)
            # Fields a body does not know are ignored: an all-optional body may succeed.
            assert r.status_code < 500, f"{key}: {r.status_code} {r.text[:200]}"
            if "json" not in attempt:
                assert r.status_code >= 400, f"{key}: {r.status_code} {r.text[:200]}"
            _check_body(document, key, r.status_code, r)
            seen += 1
    assert seen > len(SAMPLES)


# --- Errors a handler raises itself ------------------------------------------------------

# Statuses a helper named here answers, besides ApiError(status, ...) written out.
_RAISING_HELPERS = {"too_many_requests": 429}


def _documented_call(function: ast.AsyncFunctionDef | ast.FunctionDef) -> ast.Call | None:
    for decorator in function.decorator_list:
        if (
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Name)
            and decorator.func.id == "documented"
        ):
            return decorator
    return None


def _raised_statuses(function: ast.AST) -> set[int]:
    """The statuses of ApiError(<int>, ...) and of the helpers above, in the handler's own
    body (errors of the functions it calls are out of this reach)."""
    found: set[int] = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name == "ApiError" and node.args and isinstance(node.args[0], ast.Constant):
            found.add(int(node.args[0].value))
        elif name in _RAISING_HELPERS:
            found.add(_RAISING_HELPERS[name])
    return found


def _listed_statuses(call: ast.Call) -> set[int] | None:
    """The statuses @documented lists, those the builder adds for auth, a body or a query
    included; None when `responses` is not a literal dict."""
    keywords = {k.arg: k.value for k in call.keywords}
    responses = keywords.get("responses")
    if not isinstance(responses, ast.Dict):
        return None
    listed = {int(k.value) for k in responses.keys if isinstance(k, ast.Constant)}
    auth = keywords.get("auth")
    if not (isinstance(auth, ast.Constant) and auth.value is False):
        listed |= set(AUTH_ERRORS)
    if "body" in keywords:
        listed |= set(BODY_ERRORS)
    if "query" in keywords:
        listed |= set(QUERY_ERRORS)
    return listed


def _handler_modules() -> list[Path]:
    root = Path(app.__file__).parent
    return sorted(
        p
        for p in root.rglob("*.py")
        if "openapi" not in p.parts and "@documented(" in p.read_text(encoding="utf-8")
    )


def test_every_error_a_handler_raises_itself_is_documented() -> None:
    """Per handler module, statically: each `ApiError(status, ...)` in a documented
    handler's own body has its status among that operation's documented responses."""
    undocumented: list[str] = []
    handlers = 0
    for module in _handler_modules():
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            call = _documented_call(function)
            listed = _listed_statuses(call) if call else None
            if listed is None:
                continue
            handlers += 1
            for status in sorted(_raised_statuses(function) - listed):
                undocumented.append(f"{module.name}:{function.lineno} {function.name} {status}")
    assert handlers >= 60, handlers
    assert not undocumented, undocumented


# --- What the document states, held to the code ------------------------------------------


class _Answer:
    """A response as _check_body reads it."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.content = orjson.dumps(body)
        self.text = self.content.decode()
        self.headers = {"content-type": "application/json"}
        self._body = body

    def json(self) -> dict[str, Any]:
        return self._body


async def test_body_checks_hold_formats(document: dict[str, Any]) -> None:
    """A date-time that is none fails the sample check: formats are checked, not only
    types."""
    block = {"user_id": 1, "created_at": datetime.now(UTC).isoformat()}
    _check_body(document, "GET /api/v1/me/blocks", 200, _Answer({"blocks": [block]}))
    with pytest.raises(AssertionError, match="is not a 'date-time'"):
        bad = {"blocks": [{**block, "created_at": "yesterday"}]}
        _check_body(document, "GET /api/v1/me/blocks", 200, _Answer(bad))


def _enum(document: dict[str, Any], model: str, field_name: str) -> list[str]:
    prop = document["components"]["schemas"][model]["properties"][field_name]
    for choice in prop.get("anyOf", [prop]):
        if "enum" in choice:
            return list(choice["enum"])
        if "const" in choice:
            return [choice["const"]]
    raise AssertionError(f"{model}.{field_name} is no enum: {prop}")


async def test_enumerated_fields_hold_the_codes_values(document: dict[str, Any]) -> None:
    body_type = get_args(CreateConversationBody.model_fields["type"].annotation)
    assert set(_enum(document, "Conversation", "type")) == {*body_type, *READ_ONLY_TYPES}
    assert _enum(document, "Participant", "role") == list(ROLES)
    assert set(_enum(document, "ConversationSettings", "notify")) == set(
        get_args(get_args(SettingsBody.model_fields["notify"].annotation)[0])
    )
    for model in ("Device", "AdminDevice", "Delivery", "PushLogEntry"):
        assert set(_enum(document, model, "provider")) == set(ALL_PROVIDERS), model
    assert _enum(document, "PushLogEntry", "type") == ["decision", "delivery"]
    assert _enum(document, "PushLogEntry", "reason") == list(REASONS)
    # A delivery's reason is its outcome's, or "failed": decision reasons all the same.
    assert {*OUTCOME_REASON.values(), "failed"} <= set(REASONS)
    final = {o.value for o in Outcome} - {Outcome.RETRY.value}
    for model in ("PushLogEntry", "Delivery"):
        assert set(_enum(document, model, "outcome")) == final, model
    assert set(_enum(document, "Device", "platform")) == set(PROVIDERS_FOR)
    assert _enum(document, "NotificationSettings", "preview") == list(PREVIEWS)
    assert _enum(document, "NotificationSettings", "email_digest") == ["off", *PERIODS]
    assert _enum(document, "Notification", "kind") == list(KINDS)
    assert _enum(document, "Notification", "opened_how") == list(OPENED_HOW)
    assert _enum(document, "Tokens", "token_type") == ["bearer"]
    assert set(_enum(document, "Reminder", "status")) >= {"pending"}
    assert set(_enum(document, "AnnouncementStarted", "status")) == {"sending", "done", "failed"}


async def test_retry_statuses_document_retry_after(document: dict[str, Any]) -> None:
    seen = 0
    for key in _operations(document):
        method, path = key.split(" ", 1)
        for status, response in document["paths"][path][method.lower()]["responses"].items():
            if status in ("429", "503"):
                assert "Retry-After" in response.get("headers", {}), (key, status)
                seen += 1
    assert seen >= 20, seen


async def test_security_says_which_token_each_call_takes(document: dict[str, Any]) -> None:
    paths = document["paths"]
    # A bearer, or the open or action token in the body instead.
    opened = paths["/api/v1/me/notifications/{id}/opened"]["post"]
    assert opened["security"] == [{"bearer": []}, {}]
    # The secret in the URL is the whole credential.
    assert paths["/api/v1/hooks/{hook_id}/{secret}"]["post"]["security"] == []
    assert paths["/api/v1/me"]["get"]["security"] == [{"bearer": []}]


async def test_limits_are_the_codes_and_the_deployments(
    document: dict[str, Any], api: Client
) -> None:
    def query(path: str, name: str) -> dict[str, Any]:
        (param,) = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name]
        schema: dict[str, Any] = param["schema"]
        return schema

    search = query(f"{MESSENGER}/search", "limit")
    assert (search["default"], search["maximum"]) == (SEARCH_DEFAULT, SEARCH_MAX)
    assert query(f"{MESSENGER}/search", "q")["maxLength"] == MAX_QUERY_CHARS
    assert query("/api/v1/admin/stats", "days")["maximum"] == MAX_DAYS
    changes = query(f"{CONVERSATIONS}/{{conversation_id}}/messages", "limit")
    assert changes["maximum"] == MAX_CHANGES_LIMIT
    attachments = document["components"]["schemas"]["SendBody"]["properties"]["attachments"]
    configured = api.node.app.state.settings.max_attachments
    assert attachments["maxItems"] == configured
    assert "MAX_ATTACHMENTS" in attachments["description"]
    unconfigured = build_document(api.node.app.routes)["components"]["schemas"]["SendBody"]
    assert "MAX_ATTACHMENTS" in unconfigured["properties"]["attachments"]["description"]


async def test_the_changes_page_has_a_model_of_its_own(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "has_more" in schemas["MessageChanges"]["required"]
    assert "has_more" not in schemas["MessagePage"]["properties"]


async def test_samples_fill_the_fields_that_are_mostly_null(world: World) -> None:
    """The PUT sample sets an address and a digest period (checked against the schema
    there); the VAPID key is the node's."""
    put = (await SAMPLES["PUT /api/v1/me/notification-settings"](world))[0]
    assert put.status == 200 and put.json["email"] and put.json["email_digest"] != "off"
    r = await world.api.http.get(f"{MESSENGER}/push/vapid-public-key")
    assert r.json() == {"public_key": VAPID.public}
