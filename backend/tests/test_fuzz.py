"""Random input at every REST route and every frame type, on SQLite and PostgreSQL.

Routes, frame types, request models and query names are read from the app, so what
lands later is fuzzed too. Path parameters get the caller's own ids, other users' ids
and random ones; bodies are mostly the route's own model with plausible or random
values, and otherwise any JSON, nesting past every limit, or random bytes. What must
hold: never a 5xx, every error in the API's shape, a socket that stays open after a bad
frame (or closes with a code the app names), and nothing in the log that reads as a
crash. `--hypothesis-show-statistics` shows what the examples reached.

`make fuzz` runs the long profile (HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import string
import sys
import typing
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx2
import orjson
import pytest
import websockets
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.convertors import PathConvertor
from starlette.routing import Route

import app
from app.models import MAX_ID
from tests.helpers import Client, Node, User, make_settings, start_node
from tests.logcapture import Records, captured_logs

settings.register_profile(
    "quick",
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("long", settings.get_profile("quick"), max_examples=4000)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

PASSWORD = "correct horse battery"  # what Client.user() registers with
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
APP_SOURCE = Path(app.__file__).resolve().parent


# What the app declares, read from it.


def _app_models() -> list[type[BaseModel]]:
    """Every pydantic model the app defines (request bodies and frames), settings aside."""
    found: list[type[BaseModel]] = []
    pending = list(BaseModel.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("app.") and cls.__module__ != "app.config":
            found.append(cls)
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))


def _literals(annotation: Any) -> list[Any]:
    """The values of every Literal inside an annotation."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literals(arg)]


def _kinds(annotation: Any) -> set[str]:
    """The names of the plain types inside an annotation (through Annotated, unions,
    lists): what a field takes, roughly."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin is list:
        return {"list"}
    if origin is not None:
        return {k for arg in typing.get_args(annotation) for k in _kinds(arg)}
    return {getattr(annotation, "__name__", str(annotation)).lower()}


def _frame_types(models: list[type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """Frame type -> its model: the models whose `type` field is a Literal."""
    frames = {}
    for model in models:
        kind = model.model_fields.get("type")
        if kind is not None:
            for value in _literals(kind.annotation):
                frames[value] = model
    return frames


def _body_model(route: Route) -> type[BaseModel] | None:
    """The model a route reads its body into (`reader.json(request, Model)`), if any."""
    try:
        source = inspect.getsource(route.endpoint)
    except (OSError, TypeError):
        return None
    found = re.search(r"\.json\(\s*\w+,\s*(\w+)\s*\)", source)
    module = sys.modules.get(route.endpoint.__module__)
    model = getattr(module, found.group(1), None) if found else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _query_names() -> list[str]:
    """Every query parameter the app reads (`query_params.get("x")`, `query_int(r, "x")`)."""
    names: set[str] = set()
    pattern = re.compile(r'query_params\.get\(\s*"(\w+)"|query_int\(\s*\w+,\s*"(\w+)"')
    for path in APP_SOURCE.rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return sorted(names)


def _close_codes() -> set[int]:
    """The close codes the app names (CLOSE_* constants) but 1011, its answer to a crash."""
    codes = set()
    for name, module in list(sys.modules.items()):
        if name == "app" or name.startswith("app."):
            for attr, value in vars(module).items():
                if attr.startswith("CLOSE_") and isinstance(value, int):
                    codes.add(value)
    return codes - {1011}


# Values.

SPECIAL_INTS = [0, -1, 1, MAX_ID, MAX_ID + 1, -(2**31) - 1, 2**53 + 1, 2**63, 2**64, 10**20]
SPECIAL_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59Z",
    "2024-02-30T00:00:00Z",
    "💬" * 3,
    "\u202e\u200b",
    "../../etc/passwd",
    "%00",
    "https://169.254.169.254/latest/meta-data/",
]
SUBSCRIPTION = json.dumps(
    {
        "endpoint": "https://127.0.0.1:5432/x",
        "keys": {
            "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1X"
            "bjhazAkj7I99e8QcYP7DkM",
            "auth": "tBHItJI5svbpez7KI4CCXg",
        },
    }
)
DATETIMES = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.datetimes(),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
TOKENISH = st.text(alphabet=string.ascii_letters + string.digits + "-._~+/=", min_size=1)
# What HTTP lets a header value hold: visible Latin-1, inner spaces and tabs.
HEADER_VALUES = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300
).map(lambda v: v.strip().encode("latin-1"))
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]


def json_values(ids: list[Any], keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(SPECIAL_INTS),
        st.floats(),
        st.text(max_size=40),
        st.sampled_from(SPECIAL_STRINGS),
        st.integers(0, 10_000).map(lambda n: "x" * n),
        DATETIMES,
        st.sampled_from(ids),
    )
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=12,
    )


def deep(depth: int) -> str:
    return "[" * depth + '"\\u0000"' + "]" * depth


def dumps(value: Any) -> bytes:
    # The standard library writes any int and NaN/Infinity (invalid JSON, on purpose).
    return json.dumps(value).encode()


# The world the fuzzer acts in: a node of its own, users, their conversations and devices.


@dataclass(repr=False)
class World:
    node: Node
    client: Client
    me: User
    stranger: User
    ids: dict[str, list[Any]] = field(default_factory=dict)
    logs_seen: int = 0

    def __repr__(self) -> str:
        return f"World(me={self.me.id}, stranger={self.stranger.id}, ids={self.ids})"

    @property
    def every_id(self) -> list[Any]:
        return sorted({v for values in self.ids.values() for v in values}, key=str)

    async def sign_in_again(self) -> None:
        """The fuzzer may log its own session out: sign in again so it goes on as a user."""
        r = await self.client.http.get("/api/v1/me", headers=self.me.headers)
        if r.status_code != 401:
            return
        r = await self.client.http.post(
            "/api/v1/auth/login", json={"username": self.me.username, "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        self.me.token = r.json()["access_token"]


async def _device(client: Client, user: User, token: str) -> None:
    r = await client.http.post(
        "/api/v1/messenger/devices/register",
        json={"device_token": token, "platform": "android", "provider": "fcm"},
        headers=user.headers,
    )
    assert r.status_code in (200, 201), r.text


async def _session_ids(client: Client, user: User) -> list[str]:
    r = await client.http.get("/api/v1/me/sessions", headers=user.headers)
    if r.status_code != 200:
        return []
    return [s["id"] for s in r.json().get("sessions", [])]


@pytest.fixture(scope="module")
async def world(db_url: str) -> AsyncIterator[World]:
    node = await start_node(make_settings(db_url, send_rate_per_second=100_000, send_burst=100_000))
    client = Client(node)
    me, peer, stranger, other = [await client.user() for _ in range(4)]
    direct = (await client.conversation(me, peer))["id"]
    group = (await client.conversation(me, peer, stranger, title="g"))["id"]
    foreign = (await client.conversation(stranger, other))["id"]
    for i in range(3):
        await client.send(me, direct, f"m{i}")
        await client.send(stranger, foreign, f"f{i}")
    mine, theirs = f"fcm-{uuid.uuid4().hex}", f"fcm-{uuid.uuid4().hex}"
    await _device(client, me, mine)
    await _device(client, stranger, theirs)
    world = World(node, client, me, stranger)
    world.ids = {
        "user": [me.id, peer.id, stranger.id, other.id],
        "conversation": [direct, group, foreign, str(uuid.uuid4())],
        "device": [mine, theirs],
        "session": await _session_ids(client, me) + await _session_ids(client, stranger),
        "refresh": [t for t in (me.refresh_token, stranger.refresh_token) if t],
        "username": [me.username, stranger.username],
        "seq": [1, 2, 3],
    }
    yield world
    await client.close()
    await node.stop()


@pytest.fixture
def logs(world: World) -> Iterator[Records]:
    world.logs_seen = 0
    with captured_logs() as records:
        yield records


MODELS = _app_models()
FIELD_NAMES = sorted({name for model in MODELS for name in model.model_fields})
KEYS = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12))


def _plausible(name: str, annotation: Any, world: World) -> st.SearchStrategy[Any]:
    """A value of about the right kind for a field: by its name, else by its annotation."""
    ids = world.ids
    by_name: dict[str, st.SearchStrategy[Any]] = {
        "conversation_id": st.sampled_from(ids["conversation"]),
        "participant_ids": st.lists(st.sampled_from(ids["user"] + SPECIAL_INTS), max_size=4),
        "user_id": st.sampled_from(ids["user"]),
        "seq": st.one_of(st.sampled_from(ids["seq"] + SPECIAL_INTS), st.integers()),
        "device_token": st.sampled_from([*ids["device"], SUBSCRIPTION, "ab" * 32]),
        "refresh_token": st.sampled_from(ids["refresh"] or [""]),
        "username": st.one_of(st.sampled_from(ids["username"]), st.text(max_size=40)),
        "password": st.one_of(st.just(PASSWORD), st.text(max_size=300)),
        "access_token": st.one_of(st.just(world.me.token), TOKENISH),
    }
    if name in by_name:
        return by_name[name]
    literals = _literals(annotation)
    if literals:
        return st.sampled_from(literals)
    kinds = _kinds(annotation)
    if "bool" in kinds:
        return st.booleans()
    if any("datetime" in kind for kind in kinds):
        return st.one_of(DATETIMES, st.sampled_from(SPECIAL_STRINGS[4:8]))
    if "list" in kinds:
        return st.lists(st.sampled_from(world.every_id), max_size=4)
    if "int" in kinds:
        return st.sampled_from(SPECIAL_INTS + [i for i in world.every_id if isinstance(i, int)])
    return st.one_of(
        st.text(min_size=1, max_size=60),
        st.text(string.printable, min_size=1, max_size=60),
        st.sampled_from(SPECIAL_STRINGS),
    )


def _shaped(model: type[BaseModel], world: World) -> st.SearchStrategy[dict[str, Any]]:
    """An object with the model's fields, each mostly plausible and sometimes any JSON;
    now and then one of them missing, or a few keys more."""
    values = json_values(world.every_id, KEYS)
    fields = {
        name: st.one_of(*[_plausible(name, info.annotation, world)] * 3, values)
        for name, info in model.model_fields.items()
    }

    def vary(body: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        one_less = st.sampled_from(sorted(body) or [""]).map(
            lambda gone: {name: v for name, v in body.items() if name != gone}
        )
        more = st.dictionaries(KEYS, values, max_size=2).map(lambda extra: {**extra, **body})
        return st.one_of(st.just(body), st.just(body), one_less, more)

    return st.fixed_dictionaries(fields).flatmap(vary)


# REST.

QUERY_NAMES = _query_names()


def _rest_routes(node: Node) -> list[tuple[str, Route]]:
    """(method, route) for every REST route the app serves, whoever added it."""
    found = []
    for route in node.app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((method, route))
    return found


def _param(name: str, convertor: Any, world: World) -> st.SearchStrategy[str]:
    """A path parameter: an id of the kind its name says (the caller's or another
    user's), any id, or a random one."""
    kinds = [ids for kind, ids in world.ids.items() if kind in name and ids]
    known = st.sampled_from([str(i) for i in (kinds[0] if kinds else world.every_id)])
    anything = st.sampled_from([str(i) for i in world.every_id])
    if convertor.regex.startswith("[0-9]"):
        number = st.one_of(
            st.integers(min_value=0, max_value=10**25).map(str),
            st.sampled_from([str(i) for i in SPECIAL_INTS if i >= 0] + ["9" * 5000, "0" * 30]),
        )
        return st.one_of(known, known, known, anything, number)
    text = st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL_STRINGS))
    if isinstance(convertor, PathConvertor):
        return st.one_of(
            known,
            known,
            known,
            anything,
            text,
            st.lists(st.text(max_size=8), max_size=4).map("/".join),
        )
    return st.one_of(known, known, known, anything, text)


def _path(route: Route, values: dict[str, str]) -> str:
    path = route.path
    for name, convertor in route.param_convertors.items():
        safe = "/" if isinstance(convertor, PathConvertor) else ""
        value = quote(values[name], safe=safe)
        path = re.sub(r"\{" + name + r"(:[^}]*)?\}", lambda _m, v=value: v, path)
    return path


def _bodies(route: Route, world: World) -> st.SearchStrategy[bytes | None]:
    values = json_values(world.every_id, KEYS)
    own = _body_model(route)
    shaped = [_shaped(own, world).map(dumps)] * 4 if own is not None else []
    return st.one_of(
        *shaped,
        st.none(),
        st.sampled_from(MODELS).flatmap(lambda model: _shaped(model, world)).map(dumps),
        st.dictionaries(KEYS, values, max_size=6).map(dumps),
        values.map(dumps),
        st.binary(max_size=300),
        st.integers(1, 2000).map(lambda n: deep(n).encode()),
        st.integers(1, 700).map(lambda n: f'{{"content": {deep(n)}}}'.encode()),
    )


def _check_answer(r: httpx2.Response, what: str, *, page: bool = False) -> None:
    assert r.status_code < 500, what
    if r.status_code < 400:
        return
    if page and r.headers.get("content-type", "").startswith("text/html"):
        return  # a page for people (an email's link) explains itself in HTML
    body = orjson.loads(r.content)
    assert set(body) == {"error"}, what
    error = body["error"]
    assert isinstance(error.get("code"), str) and ERROR_CODE.match(error["code"]), what
    assert isinstance(error.get("message"), str) and error["message"], what


def _check_logs(world: World, logs: Records, what: str) -> None:
    failures = logs.failures(world.logs_seen)
    world.logs_seen = len(logs.records)
    assert failures == [], what


@settings(PROFILE)
@given(data=st.data())
async def test_rest_routes_answer_every_input_in_the_error_shape(
    world: World, logs: Records, data: st.DataObject
) -> None:
    method, route = data.draw(st.sampled_from(_rest_routes(world.node)), label="route")
    values = {
        name: data.draw(_param(name, convertor, world), label=name)
        for name, convertor in route.param_convertors.items()
    }
    query = data.draw(
        st.dictionaries(
            st.one_of(st.sampled_from(QUERY_NAMES), st.text(max_size=8)),
            st.one_of(
                st.integers(-(10**25), 10**25).map(str),
                st.integers(0, 300).map(str),
                st.text(max_size=30),
                st.sampled_from(["", "9" * 5000, "-0", "1e3", " 1", "1_0"]),
            ),
            max_size=3,
        ),
        label="query",
    )
    body = data.draw(_bodies(route, world), label="body")
    caller = data.draw(st.sampled_from(["me"] * 6 + ["stranger", "nobody", "garbage"]))
    headers: dict[str, Any] = {
        "Content-Type": data.draw(st.sampled_from(CONTENT_TYPES), label="content type"),
        "User-Agent": data.draw(HEADER_VALUES, label="user agent"),
    }
    if data.draw(st.booleans(), label="forwarded"):
        headers["X-Forwarded-For"] = data.draw(HEADER_VALUES, label="x-forwarded-for")
    if caller in ("me", "stranger"):
        headers.update((world.me if caller == "me" else world.stranger).headers)
    elif caller == "garbage":
        headers["Authorization"] = "Bearer " + data.draw(TOKENISH, label="token")
    path = _path(route, values)
    if query:
        path += "?" + urlencode(query)
    r = await world.client.http.request(method, path, content=body, headers=headers)
    sent = body[:300] if body else body
    what = f"{method} {path[:300]} body={sent!r} -> {r.status_code} {r.text[:300]}"
    page = not route.path.startswith("/api/")
    _check_answer(r, what, page=page)
    is_json = r.headers.get("content-type", "").startswith("application/json")
    code = r.json()["error"]["code"] if r.status_code >= 400 and is_json else ""
    event(f"{method} {route.path} -> {r.status_code} {code}")
    _check_logs(world, logs, what)
    if r.status_code == 401:
        await world.sign_in_again()


# WebSocket.

FRAME_TYPES = _frame_types(MODELS)
CLOSE_CODES = _close_codes()


def _frames(world: World) -> st.SearchStrategy[str | bytes]:
    values = json_values(world.every_id, KEYS)
    known = st.sampled_from(sorted(FRAME_TYPES)).flatmap(
        lambda kind: _shaped(FRAME_TYPES[kind], world).map(lambda f: {**f, "type": kind})
    )
    return st.one_of(
        *[known.map(lambda f: dumps(f).decode())] * 4,
        known.map(dumps),  # the same as a binary frame
        st.sampled_from(sorted(FRAME_TYPES)).flatmap(
            lambda kind: _shaped(FRAME_TYPES[kind], world).map(dumps).map(bytes.decode)
        ),
        st.fixed_dictionaries({"type": values}).map(lambda f: dumps(f).decode()),
        st.dictionaries(KEYS, values, max_size=5).map(lambda f: dumps(f).decode()),
        values.map(lambda v: dumps(v).decode()),
        st.text(max_size=100),
        st.binary(max_size=100),
        st.integers(1, 2000).map(deep),
    )


@dataclass
class Line:
    ws: websockets.ClientConnection | None = None


async def _socket(world: World, line: Line) -> websockets.ClientConnection:
    if line.ws is None or line.ws.close_code is not None:
        await world.sign_in_again()
        line.ws = await websockets.connect(f"{world.node.ws_url}?token={world.me.token}")
    return line.ws


@pytest.fixture(scope="module")
async def line(world: World) -> AsyncIterator[Line]:
    held = Line()
    yield held
    if held.ws is not None:
        await held.ws.close()


@settings(PROFILE)
@given(data=st.data())
async def test_every_frame_type_answers_every_input_and_the_socket_stays(
    world: World, line: Line, logs: Records, data: st.DataObject
) -> None:
    ws = await _socket(world, line)
    frames = data.draw(st.lists(_frames(world), min_size=1, max_size=4), label="frames")
    what = f"frames {[f[:300] for f in frames]}"
    try:
        for frame in frames:
            await ws.send(frame)
        await ws.send('{"type": "ping"}')
        while True:
            answer = orjson.loads(await ws.recv())
            assert isinstance(answer, dict) and isinstance(answer.get("type"), str), what
            event(f"{answer['type']} {answer.get('code', '')}")
            if answer["type"] == "pong":
                break
            if answer["type"] == "error":
                assert isinstance(answer.get("code"), str), what
                assert ERROR_CODE.match(answer["code"]), what
                assert answer["code"] != "internal_error", (what, answer)
                assert isinstance(answer.get("message"), str) and answer["message"], what
    except websockets.ConnectionClosed:
        event(f"closed {ws.close_code}")
        assert ws.close_code in CLOSE_CODES, (what, ws.close_code, ws.close_reason)
    _check_logs(world, logs, what)
