"""/openapi.json and /docs: every REST route is described, the description is valid
OpenAPI 3.1, and every documented operation answers, on a real node, a body its
description allows for the status it gives."""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from PIL import Image
from sqlalchemy import update
from starlette.routing import Mount, Route, WebSocketRoute

from app.main import create_app
from app.messenger.action_tokens import issue_action_token
from app.messenger.push.image_links import issue_image_token
from app.models import User as UserRow
from app.openapi.api import operation_of
from app.openapi.builder import EXCLUDED, build_document
from app.webclient import CONTENT_SECURITY_POLICY
from tests.helpers import SECRET, Client, Node, User, make_settings, start_node
from tests.test_notification_actions import web_subscription

MESSENGER = "/api/v1/messenger"
CONVERSATIONS = f"{MESSENGER}/conversations"


@pytest.fixture(scope="module")
async def api_node(sqlite_url: str) -> AsyncIterator[Node]:
    # Announcements are rate limited per admin far below what the samples make.
    node = await start_node(
        make_settings(sqlite_url, announcement_rate_per_hour=1000, announcement_burst=100)
    )
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
    assert build_document(api.node.app.routes) == first.json()


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
async def world(api: Client, api_node: Node) -> World:
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
        json={"device_token": web_subscription(), "platform": "web", "provider": "web_push"},
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
    return [Call(200, path), Call(404, f"{MESSENGER}/scheduled/{uuid.uuid4()}")]


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
    return [Call(200, path, json={"how": "click"}), Call(422, path, json={"how": "psychic"})]


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
    body = {"device_token": web_subscription(), "platform": "web", "provider": "web_push"}
    path = f"{MESSENGER}/devices/register"
    return [Call(201, path, json=body), Call(200, path, json=body)]


@sample("GET /api/v1/messenger/devices")
async def _devices(w: World) -> list[Call]:
    return [Call(200, f"{MESSENGER}/devices")]


@sample("DELETE /api/v1/messenger/devices/{device_token}")
async def _unregister_device(w: World) -> list[Call]:
    # A Web Push subscription: JSON holding an endpoint URL, so '/' in the path.
    token = web_subscription()
    body = {"device_token": token, "platform": "web", "provider": "web_push"}
    r = await w.api.http.post(f"{MESSENGER}/devices/register", json=body, headers=w.bob.headers)
    assert r.status_code == 201, r.text
    path = f"{MESSENGER}/devices/{quote(token, safe='')}"
    return [Call(200, path, w.bob), Call(404, path, w.bob)]


@sample("GET /api/v1/messenger/push/vapid-public-key")
async def _vapid(w: World) -> list[Call]:
    return [Call(404, f"{MESSENGER}/push/vapid-public-key")]


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


def _closed(schema: Any) -> Any:
    """A copy of `schema` where every object with properties allows no other field."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


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
        # Strict: a field the handler sends must be documented (the published schemas
        # leave room for fields added later, as API.md promises clients).
        components = _closed(document["components"])
        schema = {**content["application/json"]["schema"], "components": components}
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(response.json()),
            key=lambda e: list(e.absolute_path),
        )
        assert not errors, (
            f"{key} {status}: {[f'{list(e.absolute_path)}: {e.message}' for e in errors[:5]]}"
        )
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
