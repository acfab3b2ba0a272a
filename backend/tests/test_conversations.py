"""Conversations, history and per-participant settings, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.helpers import Client

BASE = "/api/v1/messenger/conversations"


async def test_direct_is_one_per_pair(client: Client) -> None:
    a, b = await client.user(), await client.user()
    r1 = await client.http.post(
        BASE, json={"type": "direct", "participant_ids": [b.id]}, headers=a.headers
    )
    assert r1.status_code == 201
    conv = r1.json()
    assert conv["type"] == "direct" and conv["participant_ids"] == sorted([a.id, b.id])
    assert conv["last_message"] is None and conv["unread_count"] == 0
    # Asked again, from either side, it is the same conversation.
    r2 = await client.http.post(
        BASE, json={"type": "direct", "participant_ids": [a.id]}, headers=b.headers
    )
    r3 = await client.http.post(
        BASE, json={"type": "direct", "participant_ids": [a.id, b.id]}, headers=a.headers
    )
    assert r2.status_code == r3.status_code == 200
    assert r2.json()["id"] == r3.json()["id"] == conv["id"]


async def test_group_rules(client: Client) -> None:
    a, b, c = await client.user(), await client.user(), await client.user()
    r = await client.http.post(
        BASE,
        json={"type": "group", "participant_ids": [b.id, c.id], "title": " Team "},
        headers=a.headers,
    )
    assert r.status_code == 201
    assert r.json()["title"] == "Team" and r.json()["participant_ids"] == sorted([a.id, b.id, c.id])

    cases = [
        ({"type": "group", "participant_ids": []}, "invalid_field"),
        ({"type": "group", "participant_ids": [a.id]}, "invalid_field"),
        ({"type": "direct", "participant_ids": [b.id, c.id]}, "invalid_field"),
        ({"type": "direct", "participant_ids": [999_999]}, "unknown_user"),
        ({"type": "group", "participant_ids": [b.id, 999_998]}, "unknown_user"),
        ({"type": "group", "participant_ids": list(range(1, 1002))}, "invalid_field"),
        ({"type": "channel", "participant_ids": [b.id]}, "invalid_field"),
    ]
    for body, code in cases:
        r = await client.http.post(BASE, json=body, headers=a.headers)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == code


async def test_list_has_last_message_and_unread(client: Client) -> None:
    a, b, c = await client.user(), await client.user(), await client.user()
    direct = await client.conversation(a, b)
    group = await client.conversation(a, b, c, title="Three")
    for i in range(3):
        assert (await client.send(a, direct["id"], f"d{i}")).status_code == 201
    assert (await client.send(c, group["id"], "g0")).status_code == 201

    r = await client.http.get(BASE, headers=b.headers)
    convs = {c_["id"]: c_ for c_ in r.json()["conversations"]}
    assert convs[direct["id"]]["unread_count"] == 3
    assert convs[direct["id"]]["last_message"]["content"] == "d2"
    assert convs[group["id"]]["unread_count"] == 1
    # Newest activity first.
    assert [c_["id"] for c_ in r.json()["conversations"]][:2] == [group["id"], direct["id"]]
    # The sender's own messages are not unread for them.
    r = await client.http.get(BASE, headers=a.headers)
    assert {c_["id"]: c_["unread_count"] for c_ in r.json()["conversations"]} == {
        direct["id"]: 0,
        group["id"]: 1,
    }

    # Reading moves the mark forward only, and never past the last message.
    read = f"{BASE}/{direct['id']}/read"
    assert (await client.http.post(read, json={"seq": 2}, headers=b.headers)).status_code == 200
    await client.http.post(read, json={"seq": 1}, headers=b.headers)
    await client.http.post(read, json={"seq": 99}, headers=b.headers)
    r = await client.http.get(BASE, headers=b.headers)
    assert {c_["id"]: c_["unread_count"] for c_ in r.json()["conversations"]}[direct["id"]] == 1


async def test_history_paging(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    for i in range(1, 11):
        await client.send(a, conv["id"], f"m{i}")
    seqs = lambda ms: [m["seq"] for m in ms]  # noqa: E731
    assert seqs(await client.messages(b, conv["id"])) == list(range(1, 11))
    assert seqs(await client.messages(b, conv["id"], limit=3)) == [8, 9, 10]
    assert seqs(await client.messages(b, conv["id"], before_seq=8, limit=3)) == [5, 6, 7]
    assert seqs(await client.messages(b, conv["id"], after_seq=7)) == [8, 9, 10]
    assert seqs(await client.messages(b, conv["id"], after_seq=2, limit=2)) == [3, 4]
    assert seqs(await client.messages(b, conv["id"], after_seq=2, before_seq=6)) == [3, 4, 5]
    message = (await client.messages(b, conv["id"], limit=1))[0]
    assert set(message) == {
        "id",
        "conversation_id",
        "seq",
        "sender_id",
        "content",
        "client_msg_id",
        "created_at",
        "mentions",
        "edited_at",
        "deleted_at",
        "reply_to",
        "reactions",
        "attachments",
    }
    assert message["created_at"].endswith("+00:00")


async def test_settings_get_and_put(client: Client) -> None:
    a, b = await client.user(), await client.user()
    conv = await client.conversation(a, b)
    url = f"{BASE}/{conv['id']}/settings"
    r = await client.http.get(url, headers=b.headers)
    assert r.json() == {"muted": False, "mute_until": None, "push_enabled": True, "notify": "all"}
    r = await client.http.put(url, json={"muted": True}, headers=b.headers)
    assert r.json() == {"muted": True, "mute_until": None, "push_enabled": True, "notify": "all"}
    r = await client.http.put(
        url,
        json={"muted": False, "mute_until": "2030-01-02T03:04:05Z", "push_enabled": False},
        headers=b.headers,
    )
    body = r.json()
    assert body["muted"] is False and body["push_enabled"] is False
    assert body["mute_until"].startswith("2030-01-02T03:04:05")
    # Settings are per participant: the other side is untouched.
    r = await client.http.get(url, headers=a.headers)
    assert r.json() == {"muted": False, "mute_until": None, "push_enabled": True, "notify": "all"}
    r = await client.http.put(url, json={"mute_until": None}, headers=b.headers)
    assert r.json()["mute_until"] is None
    for bad in (
        {"muted": "yes"},
        {"mute_until": "tomorrow"},
        {"mute_until": "2030-01-02T03:04:05"},
    ):
        r = await client.http.put(url, json=bad, headers=b.headers)
        assert r.status_code == 422, bad
