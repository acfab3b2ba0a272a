"""GET one conversation: its participants, their roles and read marks, on SQLite and
PostgreSQL."""

from __future__ import annotations

from tests.helpers import Client, Socket, eventually

BASE = "/api/v1/messenger/conversations"


async def test_group_participants_roles_and_read_marks(client: Client) -> None:
    a, b, c = await client.user(), await client.user(), await client.user()
    group = await client.conversation(a, b, c, title="Three")
    for i in range(3):
        assert (await client.send(a, group["id"], f"m{i}")).status_code == 201

    # B reads over REST, C over its socket: both marks are there for everyone.
    read = f"{BASE}/{group['id']}/read"
    assert (await client.http.post(read, json={"seq": 3}, headers=b.headers)).status_code == 200
    sock = await Socket.connect(client.node, c)
    try:
        await sock.send({"type": "read", "conversation_id": group["id"], "seq": 2})

        async def c_has_read() -> bool:
            r = await client.http.get(f"{BASE}/{group['id']}", headers=a.headers)
            marks = {p["user_id"]: p["last_read_seq"] for p in r.json()["participants"]}
            return marks[c.id] == 2

        await eventually(c_has_read)
    finally:
        await sock.close()

    for viewer in (a, b, c):
        r = await client.http.get(f"{BASE}/{group['id']}", headers=viewer.headers)
        assert r.status_code == 200, r.text
        conv = r.json()
        # The same conversation the list shows, seen by this viewer...
        listed = await client.http.get(BASE, headers=viewer.headers)
        entry = next(x for x in listed.json()["conversations"] if x["id"] == group["id"])
        assert {k: v for k, v in conv.items() if k != "participants"} == entry
        # ...with every participant: the creator owns the group, the rest are members;
        # the sender's own mark moved with each send.
        assert conv["participants"] == [
            {"user_id": u.id, "role": role, "last_read_seq": seq}
            for u, role, seq in sorted(
                [(a, "owner", 3), (b, "member", 3), (c, "member", 2)], key=lambda x: x[0].id
            )
        ]
    assert (await client.http.get(f"{BASE}/{group['id']}", headers=c.headers)).json()[
        "unread_count"
    ] == 1


async def test_direct_has_two_members(client: Client) -> None:
    a, b = await client.user(), await client.user()
    direct = await client.conversation(a, b)
    assert (await client.send(b, direct["id"], "hi")).status_code == 201
    r = await client.http.get(f"{BASE}/{direct['id']}", headers=a.headers)
    assert r.status_code == 200
    conv = r.json()
    assert conv["type"] == "direct" and conv["last_message"]["content"] == "hi"
    assert sorted(conv["participants"], key=lambda p: p["user_id"]) == sorted(
        [
            {"user_id": a.id, "role": "member", "last_read_seq": 0},
            {"user_id": b.id, "role": "member", "last_read_seq": 1},
        ],
        key=lambda p: p["user_id"],
    )


async def test_refused_to_outsiders_unknown_and_anonymous(client: Client) -> None:
    a, b, outsider = await client.user(), await client.user(), await client.user()
    group = await client.conversation(a, b, title="Private")
    assert (await client.send(a, group["id"], "secret")).status_code == 201

    r = await client.http.get(f"{BASE}/{group['id']}", headers=outsider.headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "not_a_participant"
    assert "secret" not in r.text and "participants" not in r.json()

    for unknown in ("00000000-0000-0000-0000-000000000000", "nope", "x" * 300):
        r = await client.http.get(f"{BASE}/{unknown}", headers=a.headers)
        assert r.status_code == 404, (unknown, r.text)
        assert r.json()["error"]["code"] == "conversation_not_found"

    r = await client.http.get(f"{BASE}/{group['id']}")
    assert r.status_code == 401
    r = await client.http.get(
        f"{BASE}/{group['id']}", headers={"Authorization": "Bearer not-a-token"}
    )
    assert r.status_code == 401
