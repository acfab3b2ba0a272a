"""The admin dashboard at /admin: refused to a non-admin; for an admin, Chart.js charts drawn
from push records seeded in the node's database over several past days, and a user lookup
with the user's devices and push log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect
from sqlalchemy import delete, insert, update

from app.messenger.models import DeviceToken, Message, Notification, PushAttempt, PushDecision
from app.models import PushStatsDaily, PushStatsDay
from app.models import User as UserRow
from app.webclient import CONTENT_SECURITY_POLICY
from tests.browser.support import NewContext, sign_in
from tests.helpers import Client, Node, User

SEEDED_DAYS = (6, 5, 4, 3, 2)  # days before today: no other test writes push rows there
# Per day i (0..4): deliveries by provider and outcome.
PUSHES = {
    ("fcm", "delivered"): lambda i: 10 + i,
    ("fcm", "failed"): lambda i: 2,
    ("web_push", "delivered"): lambda i: 5 + i,
    ("web_push", "dead_token"): lambda i: 1,
    ("apns", "delivered"): lambda i: 3,
}
SKIPPED = {"online": lambda i: 3, "muted": lambda i: 1 + i, "quiet_hours": lambda i: 2}
NOTIFIED, OPENED = 10, 4
SLOW = 2  # delivered pushes a day whose message was committed 4 s before (the rest: 200 ms)
REGISTERED = {"web_push": 2, "fcm": 1}
INACTIVE_FOR = (35, 65, 95)  # days unused, of three old devices

# Counts, for each chart's canvas, the pixels drawn in each dataset's colour (any colour
# string the canvas accepts is turned into RGB by drawing it).
COLOUR_PIXELS = """
(id) => {
  const canvas = document.getElementById(id);
  const chart = Chart.getChart(canvas);
  const probe = document.createElement('canvas').getContext('2d', { willReadFrequently: true });
  const rgb = (colour) => {
    probe.clearRect(0, 0, 1, 1);
    probe.fillStyle = colour;
    probe.fillRect(0, 0, 1, 1);
    return [...probe.getImageData(0, 0, 1, 1).data.slice(0, 3)];
  };
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  const result = {};
  for (const dataset of chart.data.datasets) {
    const [r, g, b] = rgb(dataset.backgroundColor);
    let count = 0;
    for (let p = 0; p < data.length; p += 4) {
      if (data[p + 3] > 200 && Math.abs(data[p] - r) < 6 && Math.abs(data[p + 1] - g) < 6
          && Math.abs(data[p + 2] - b) < 6) count += 1;
    }
    result[dataset.label] = count;
  }
  return result;
}
"""

CHART_DATA = """
(id) => {
  const chart = Chart.getChart(document.getElementById(id));
  return chart && {
    type: chart.config.type,
    labels: chart.data.labels,
    datasets: chart.data.datasets.map((d) => ({ label: d.label, data: d.data })),
  };
}
"""


@dataclass
class Seeded:
    days: list[str]  # the seeded days, oldest first, as the charts label them
    device_ids: list[str] = field(default_factory=list)
    log_entries: int = 0


def at_noon(days_ago: int) -> datetime:
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def device(user_id: int, provider: str, created: datetime, used: datetime, name: str) -> dict:
    token = f"seed-{uuid.uuid4().hex}"
    return {
        "id": str(uuid.uuid4()),
        "user_id": user_id,
        "token": token,
        "token_key": token,
        "platform": {"fcm": "android", "apns": "ios", "web_push": "web"}[provider],
        "provider": provider,
        "device_name": name,
        "is_active": True,
        "created_at": created,
        "last_used_at": used,
    }


async def seed(node: Node, quinn: User, conversation_id: str) -> Seeded:
    """Push records of `quinn` over SEEDED_DAYS, straight into the node's database."""
    now = datetime.now(UTC)
    seeded = Seeded(days=[at_noon(d).date().isoformat() for d in SEEDED_DAYS])
    devices: list[dict] = [
        device(quinn.id, "fcm", now - timedelta(days=100), now - timedelta(days=age), f"old {age}")
        for age in INACTIVE_FOR
    ]
    messages: list[dict] = []
    attempts: list[dict] = []
    decisions: list[dict] = []
    notifications: list[dict] = []
    for i, days_ago in enumerate(SEEDED_DAYS):
        noon = at_noon(days_ago)
        for provider, count in REGISTERED.items():
            devices += [
                device(quinn.id, provider, noon, now, f"{provider} {days_ago}.{k}")
                for k in range(count)
            ]
        fast, slow = str(uuid.uuid4()), str(uuid.uuid4())
        for seq, (message_id, before_ms) in enumerate(((fast, 200), (slow, 4000))):
            messages.append(
                {
                    "id": message_id,
                    "conversation_id": conversation_id,
                    "seq": 1000 + 2 * i + seq,
                    "sender_id": quinn.id,
                    "content": f"seeded {days_ago}",
                    "created_at": noon - timedelta(milliseconds=before_ms),
                }
            )
        slow_left = SLOW
        for (provider, outcome), count in PUSHES.items():
            for _ in range(count(i)):
                is_slow = outcome == "delivered" and slow_left > 0
                slow_left -= is_slow
                attempts.append(
                    {
                        "message_id": slow if is_slow else fast,
                        "device_id": devices[3]["id"],
                        "user_id": quinn.id,
                        "provider": provider,
                        "outcome": outcome,
                        "attempts": 1,
                        "latency_ms": 40.0,
                        "created_at": noon,
                        "conversation_id": conversation_id,
                        "seq": 1000 + 2 * i,
                    }
                )
        for reason, count in SKIPPED.items():
            decisions += [
                {
                    "user_id": quinn.id,
                    "conversation_id": conversation_id,
                    "message_id": fast,
                    "first_seq": 1000 + 2 * i,
                    "last_seq": 1000 + 2 * i,
                    "reason": reason,
                    "created_at": noon - timedelta(seconds=1),
                }
                for _ in range(count(i))
            ]
        notifications += [
            {
                "id": str(uuid.uuid4()),
                "user_id": quinn.id,
                "kind": "test",
                "title": "Seeded",
                "body": f"seeded {days_ago}.{k}",
                "created_at": noon,
                "opened_at": noon + timedelta(seconds=30) if k < OPENED else None,
                "opened_how": "click" if k < OPENED else None,
            }
            for k in range(NOTIFIED)
        ]
    async with node.services.engine.begin() as conn:
        await conn.execute(insert(DeviceToken), devices)
        await conn.execute(insert(Message), messages)
        await conn.execute(insert(PushAttempt), attempts)
        await conn.execute(insert(PushDecision), decisions)
        await conn.execute(insert(Notification), notifications)
        # Days the node's rollup may have done before these rows were there: the stats
        # compute them from the raw rows again (or the next rollup redoes them).
        days = [at_noon(d).date() for d in SEEDED_DAYS]
        await conn.execute(delete(PushStatsDaily).where(PushStatsDaily.day.in_(days)))
        await conn.execute(delete(PushStatsDay).where(PushStatsDay.day.in_(days)))
    seeded.device_ids = [d["id"] for d in devices]
    seeded.log_entries = len(attempts) + len(decisions)
    return seeded


async def make_admin(node: Node, user: User) -> None:
    async with node.services.engine.begin() as conn:
        await conn.execute(update(UserRow).where(UserRow.id == user.id).values(is_admin=True))


async def chart(page: Page, canvas_id: str) -> dict[str, Any]:
    found: dict[str, Any] = await page.evaluate(CHART_DATA, canvas_id)
    assert found, f"no chart on #{canvas_id}"
    return found


def on_day(data: dict[str, Any], label: str, day: str) -> Any:
    dataset = next(d for d in data["datasets"] if d["label"] == label)
    return dataset["data"][data["labels"].index(day)]


async def test_admin_page_refuses_a_non_admin(
    new_context: NewContext, web_node: Node, api: Client
) -> None:
    # The page and the vendored chart library are served under the client's strict policy.
    for path in ("/admin", "/vendor/chartjs/chart.umd.js"):
        r = await api.http.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "Chart.js v4" in r.text[:200]

    sam = await api.user(display_name="Sam")
    page = await sign_in(await new_context(notifications=False), web_node.url, sam)
    await expect(page.locator("#admin-link")).to_be_hidden()
    await page.goto(web_node.url + "/admin")
    await expect(page.locator("#admin-status")).to_have_text(
        "Admins only. This account may not see the dashboard."
    )
    await expect(page.locator("#admin-content")).to_be_hidden()
    assert await page.evaluate("Chart.getChart('chart-pushes') === undefined")


async def test_admin_dashboard_charts_the_seeded_days_and_looks_users_up(
    new_context: NewContext, web_node: Node, api: Client, artifacts: Path
) -> None:
    ada = await api.user(name=f"adm{uuid.uuid4().hex[:8]}", display_name="Ada Admin")
    quinn = await api.user(name=f"quinn{uuid.uuid4().hex[:8]}", display_name="Quinn")
    cid = (await api.conversation(quinn, ada))["id"]
    await make_admin(web_node, ada)
    seeded = await seed(web_node, quinn, cid)

    page = await sign_in(await new_context(notifications=False), web_node.url, ada)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await expect(page.locator("#admin-link")).to_be_visible()
    await page.click("#admin-link")
    await page.wait_for_url(web_node.url + "/admin")
    await expect(page.locator("#admin-content")).to_be_visible()
    await page.select_option("#admin-days", "7")
    await expect(page.locator("#admin-main")).to_have_attribute("aria-busy", "false")

    # Chart.js holds the seeded figures, day by day.
    pushes = await chart(page, "chart-pushes")
    assert pushes["type"] == "bar" and len(pushes["labels"]) == 7
    for i, day in enumerate(seeded.days):
        for (provider, outcome), count in PUSHES.items():
            assert on_day(pushes, f"{provider} · {outcome.replace('_', ' ')}", day) == count(i)
    success = await chart(page, "chart-success")
    latency = await chart(page, "chart-latency")
    opens = await chart(page, "chart-opens")
    skipped = await chart(page, "chart-skipped")
    registered = await chart(page, "chart-devices")
    for i, day in enumerate(seeded.days):
        total = sum(count(i) for count in PUSHES.values())
        delivered = sum(c(i) for (_, outcome), c in PUSHES.items() if outcome == "delivered")
        assert abs(on_day(success, "delivered", day) - 100 * delivered / total) < 0.02
        # Bucket upper bounds: 200 ms falls in "at most 250", 4 s in "at most 5000".
        assert on_day(latency, "p50", day) == 250
        assert on_day(latency, "p95", day) == 5000
        assert on_day(opens, "open rate (%)", day) == 100 * OPENED / NOTIFIED
        assert on_day(opens, "median time to open (s)", day) == 60
        for reason, count in SKIPPED.items():
            assert on_day(skipped, reason.replace("_", " "), day) == count(i)
        for provider, count in REGISTERED.items():
            assert on_day(registered, provider, day) == count
    stats = (
        await api.http.get(
            "/api/v1/admin/stats",
            params={"days": 7},
            headers={"Authorization": f"Bearer {ada.token}"},
        )
    ).json()
    for days, least in zip((30, 60, 90), (3, 2, 1), strict=True):
        shown = stats["devices_inactive"][str(days)]
        assert shown >= least
        await expect(page.locator(f"#inactive-{days}")).to_have_text(str(shown))

    # And they are drawn: each chart's canvas holds many pixels of its datasets' colours.
    for canvas_id, least in (
        ("chart-pushes", 300),
        ("chart-success", 100),
        ("chart-latency", 100),
        ("chart-opens", 100),
        ("chart-skipped", 200),
        ("chart-devices", 200),
    ):
        await page.locator(f"#{canvas_id}").screenshot(
            path=str(artifacts / f"admin-{canvas_id}.png")
        )
        pixels = await page.evaluate(COLOUR_PIXELS, canvas_id)
        assert sum(pixels.values()) >= least, (canvas_id, pixels)
        drawn = [label for label, count in pixels.items() if count >= 20]
        assert len(drawn) >= min(2, len(pixels)), (canvas_id, pixels)
    await page.screenshot(path=str(artifacts / "admin-dashboard.png"), full_page=True)
    assert problems == []  # no script error, nothing the Content-Security-Policy refused

    # The 90-day period draws 90 days.
    await page.select_option("#admin-days", "90")
    await expect(page.locator("#admin-main")).to_have_attribute("aria-busy", "false")
    assert len((await chart(page, "chart-pushes"))["labels"]) == 90

    # User lookup: Quinn's devices and push log, a page at a time.
    await page.fill("#admin-user-query", quinn.username)
    await page.click("#admin-user-search")
    found = page.locator(f'#admin-user-results button[data-user-id="{quinn.id}"]')
    await expect(found).to_have_text(f"Quinn (@{quinn.username})")
    await found.click()
    await expect(page.locator("#admin-user-detail")).to_be_visible()
    rows = page.locator("#admin-devices tbody tr")
    await expect(rows).to_have_count(len(seeded.device_ids))
    shown_ids = await rows.evaluate_all("(rows) => rows.map((r) => r.dataset.deviceId)")
    assert sorted(shown_ids) == sorted(seeded.device_ids)
    await expect(page.locator("#admin-devices")).to_contain_text("old 95")
    log = page.locator("#admin-push-log tbody tr")
    await expect(log).to_have_count(50)
    await page.click("#admin-log-more")
    await expect(log).to_have_count(100)
    await expect(
        page.locator('#admin-push-log tbody tr[data-reason="quiet_hours"]').first
    ).to_be_visible()
    await expect(
        page.locator('#admin-push-log tbody tr[data-reason="dead_token"]').first
    ).to_contain_text("web_push")
    shown = 100
    while shown < seeded.log_entries:
        await page.click("#admin-log-more")
        shown = min(shown + 50, seeded.log_entries)
        await expect(log).to_have_count(shown)
    await expect(page.locator("#admin-log-more")).to_be_hidden()
