"""The `search` scenario: message search latency over a large history on PostgreSQL.

1,000,000 messages (100 in each of 10,000 group conversations of 5 members) are
written straight into the bench database with INSERT ... SELECT generate_series, their
words drawn from a 5,000-word vocabulary with a Zipf-like (log-uniform) rank, so a few
words are in most messages and most words are rare. The search indexes are built once they
are in (as CREATE INDEX after a bulk load is far quicker than keeping it on every row),
with the definitions migration 0007 gives them. Twenty searchers are each in 50 of the
conversations. One node serves `GET /api/v1/messenger/search`, asked one request at a
time (the searchers in turn) for common words, rare words, two words, and a common
word within one conversation; each kind is timed from request to complete answer.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.messenger.search import SEARCH_INDEXES
from bench.stats import summary_ms

if TYPE_CHECKING:
    from bench.runner import Bench

SEARCH = "/api/v1/messenger/search"
VOCABULARY = 5000
SEARCHERS = 20
CONVERSATIONS_PER_SEARCHER = 50
MEMBERS = 5


@dataclass(frozen=True)
class Sizes:
    conversations: int
    messages_per_conversation: int
    users: int
    requests: int  # timed, per kind of query
    warmup: int


FULL = Sizes(10_000, 100, 2_000, 300, 30)
QUICK = Sizes(1_000, 100, 500, 60, 10)


def vocabulary(n: int) -> list[str]:
    """n distinct pronounceable words (three or four syllables), the same every run."""
    rng = random.Random(14)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words: dict[str, None] = {}
    while len(words) < n:
        syllables = rng.choice((3, 4))
        words["".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))] = None
    return list(words)


async def fill(bench: Bench, sizes: Sizes, words: list[str], searchers: list[int]) -> float:
    """Conversations, participants and messages in bulk; the seconds it took."""
    assert bench.pool is not None
    started = time.monotonic()
    users = await bench.insert_users("srch", sizes.users)
    user_ids = [u["id"] for u in users]
    async with bench.pool.acquire() as conn:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(
            "INSERT INTO conversations (id, type, title, created_by, created_at, last_seq) "
            "SELECT 'srch-' || i, 'group', 'topic ' || i, ($1::int[])[1 + i % cardinality($1)], "
            "now() - interval '30 days', $2 FROM generate_series(0, $3 - 1) AS i",
            user_ids,
            sizes.messages_per_conversation,
            sizes.conversations,
        )
        # Five members each, spread over the users; the first is the creator.
        await conn.execute(
            "INSERT INTO participants (conversation_id, user_id, joined_at) "
            "SELECT DISTINCT 'srch-' || i, ($1::int[])[1 + (i + k * 401) % cardinality($1)], now() "
            "FROM generate_series(0, $2 - 1) AS i, generate_series(0, $3 - 1) AS k",
            user_ids,
            sizes.conversations,
            MEMBERS,
        )
        rng = random.Random(7)
        chosen = [
            (f"srch-{i}", user)
            for user in searchers
            for i in rng.sample(range(sizes.conversations), CONVERSATIONS_PER_SEARCHER)
        ]
        await conn.executemany(
            "INSERT INTO participants (conversation_id, user_id, joined_at) "
            "VALUES ($1, $2, now()) ON CONFLICT DO NOTHING",
            chosen,
        )
        # The search indexes as the migration made them, dropped for the load and made
        # again after it.
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'messages' AND indexname = ANY($1::text[])",
            list(SEARCH_INDEXES),
        )
        for index in indexes:
            await conn.execute(f"DROP INDEX {index['indexname']}")
        step = max(1, sizes.conversations // 10)
        for first in range(0, sizes.conversations, step):
            # 4 to 16 words each; a word's rank is log-uniform in 1..VOCABULARY.
            await conn.execute(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, content, created_at) "
                "SELECT gen_random_uuid()::text, c.id, s.seq, c.created_by, "
                "  (SELECT string_agg(($1::text[])[floor(exp(random() * ln($2)))::int], ' ') "
                "   FROM generate_series(1, 4 + (s.seq * 7 + c.created_by) % 13) AS w "
                "   WHERE s.seq > 0), "
                "  now() - interval '30 days' + s.seq * interval '1 minute' "
                "FROM conversations AS c CROSS JOIN generate_series(1, $3) AS s(seq) "
                "WHERE c.id = ANY($4::text[])",
                words,
                len(words),
                sizes.messages_per_conversation,
                [f"srch-{i}" for i in range(first, min(first + step, sizes.conversations))],
            )
            done = min(first + step, sizes.conversations) * 100 // sizes.conversations
            print(f"[bench] search: {done} % of the messages written", file=sys.stderr, flush=True)
        for index in indexes:
            await conn.execute(index["indexdef"])
        # What autovacuum does to a table that took this many rows: statistics, and the
        # visibility map that lets the search read vectors from the index alone.
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("ANALYZE participants")
        await conn.execute("ANALYZE conversations")
    return time.monotonic() - started


async def run(bench: Bench, quick: bool) -> dict[str, Any]:
    assert bench.pool is not None and bench.http is not None
    sizes = QUICK if quick else FULL
    words = vocabulary(VOCABULARY)
    searcher_users = await bench.insert_users("finder", SEARCHERS)
    fill_seconds = await fill(bench, sizes, words, [u["id"] for u in searcher_users])
    total = await bench.pool.fetchval("SELECT count(*) FROM messages")
    (node,) = await bench.start_nodes("a")

    rng = random.Random(3)
    common = words[:3]  # each in a large share of all messages
    rare = words[2000:]  # each in a few hundred messages, or fewer

    async def one_conversation(user: dict[str, Any]) -> str:
        assert bench.pool is not None
        found: str = await bench.pool.fetchval(
            "SELECT conversation_id FROM participants WHERE user_id = $1 "
            "ORDER BY conversation_id LIMIT 1",
            user["id"],
        )
        return found

    conversation_of = {u["id"]: await one_conversation(u) for u in searcher_users}
    kinds = {
        "common word": lambda _u: {"q": rng.choice(common)},
        "rare word": lambda _u: {"q": rng.choice(rare)},
        "two words (common, rare)": lambda _u: {"q": f"{rng.choice(common)} {rng.choice(rare)}"},
        "common word, one conversation": lambda u: {
            "q": rng.choice(common),
            "conversation_id": conversation_of[u["id"]],
        },
    }
    latency: dict[str, Any] = {}
    found: dict[str, float] = {}
    for kind, params_for in kinds.items():
        timings: list[float] = []
        results = 0
        for i in range(sizes.warmup + sizes.requests):
            user = searcher_users[i % len(searcher_users)]
            headers = {"Authorization": f"Bearer {user['token']}"}
            started = time.perf_counter()
            async with bench.http.get(
                f"{node.url}{SEARCH}", params=params_for(user), headers=headers
            ) as r:
                body = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"search: {r.status} {body}")
            elapsed = time.perf_counter() - started
            if i >= sizes.warmup:
                timings.append(elapsed)
                results += len(body["messages"])
        latency[kind] = summary_ms(timings)
        found[kind] = round(results / sizes.requests, 1)

    share = await bench.pool.fetchval(
        "SELECT count(*) FILTER (WHERE search_vector @@ to_tsquery('english', $1))::float "
        "/ count(*) FROM (SELECT search_vector FROM messages TABLESAMPLE SYSTEM (2)) AS s",
        common[0],
    )
    per_searcher = await bench.pool.fetchval(
        "SELECT count(*) FROM messages AS m JOIN participants AS p "
        "ON p.conversation_id = m.conversation_id WHERE p.user_id = $1",
        searcher_users[0]["id"],
    )
    return {
        "messages": total,
        "conversations": sizes.conversations,
        "searcher_conversations": CONVERSATIONS_PER_SEARCHER,
        "searcher_messages": per_searcher,
        "common_word_share": round(share or 0.0, 3),
        "fill_seconds": round(fill_seconds, 1),
        "results_per_request": found,
        "latency": latency,
    }
