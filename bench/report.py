"""The table: each scenario's figures, the target where there is one, and the CPU split."""

from __future__ import annotations

import math
import statistics
from typing import Any

Row = dict[str, Any]


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.{digits}f}"
    return f"{int(value):,}"


def _row(
    scenario: str, figure: str, value: Any, text: str, target: str = "", ok: Any = None
) -> Row:
    return {
        "scenario": scenario,
        "figure": figure,
        "value": value,
        "text": text,
        "target": target,
        "met": ok,
    }


def _cpu(scenario: str, cpu: dict[str, float] | None, where: str = "") -> list[Row]:
    if not cpu:
        return []
    text = "  ".join(f"{k} {v:.0f}" for k, v in cpu.items() if k != "node_sys")
    if "node_sys" in cpu:
        text += f"  (node in kernel {cpu['node_sys']:.0f})"
    return [_row(scenario, f"CPU % of a core{where}", cpu, text)]


def _lat(scenario: str, name: str, s: dict[str, Any], target: str = "", ok: Any = None) -> Row:
    text = f"{_num(s['p50_ms'], 2)} / {_num(s['p95_ms'], 2)} / {_num(s['p99_ms'], 2)}"
    return _row(scenario, f"{name} p50/p95/p99 ms", s, text, target, ok)


def _pushes(name: str, r: dict[str, Any]) -> list[Row]:
    """push (1,000 members, the three providers in turn) and push_web (Web Push only)."""
    rows: list[Row] = []
    measured = [x for x in r["rounds"] if not x["warmup"]]
    done = [x["done_s"] for x in measured]
    rates = [x["pushes_per_s"] for x in measured]
    worst = max(done) if done else float("nan")
    rows.append(
        _row(
            name,
            f"{r['members']} members: commit to last accepted, s",
            done,
            " / ".join(_num(d, 3) for d in done) + f" (median {_num(statistics.median(done), 3)})"
            if done
            else "-",
            "< 0.5 s" if name == "push" else "",
            worst < 0.5 if done and name == "push" else None,
        )
    )
    rows.append(
        _row(
            name,
            "pushes/s",
            rates,
            " / ".join(_num(x) for x in rates),
            ">= 3,000/s" if name == "push_web" else "",
            min(rates) >= 3000 if rates and name == "push_web" else None,
        )
    )
    per_push = [x.get("node_cpu_ms_per_push") for x in measured]
    if per_push and all(x for x in per_push):
        rows.append(
            _row(
                name,
                "node CPU ms per push (pushes per node CPU-second)",
                per_push,
                " / ".join(f"{_num(x, 3)} ({_num(1000 / x)})" for x in per_push),
            )
        )
    if measured:
        rows.append(_lat(name, "commit to accepted", measured[-1]["commit_to_accepted"]))
        missing = sum(x["expected"] - x["accepted"] for x in measured)
        rows.append(_row(name, "pushes not accepted", missing, _num(missing)))
        rows += _cpu(name, measured[-1].get("cpu_pct"), " (last round)")
    return rows


def summarise(report: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    sc = report["scenarios"]
    for name, r in sc.items():
        if "error" in r:
            rows.append(_row(name, "error", r["error"], r["error"][:90]))
    if "latency" in sc and "error" not in sc["latency"]:
        r = sc["latency"]
        p50 = r["delivery"]["p50_ms"]
        rows.append(_lat("latency", "delivery", r["delivery"], "p50 < 2 ms", p50 < 2))
        rows.append(_lat("latency", "ack", r["ack"]))
        rows += _cpu("latency", r.get("cpu_pct"))
    if "throughput" in sc and "error" not in sc["throughput"]:
        r = sc["throughput"]
        c = r["closed"]
        rows.append(
            _row(
                "throughput",
                f"closed loop ({c['senders']} senders x {c['window']}): persisted/s",
                c["persisted_per_s"],
                _num(c["persisted_per_s"]),
                ">= 10,000/s",
                c["persisted_per_s"] >= 10_000,
            )
        )
        rows.append(
            _row(
                "throughput",
                "closed loop: delivered/s",
                c["delivered_per_s"],
                _num(c["delivered_per_s"]),
            )
        )
        rows.append(_lat("throughput", "closed loop delivery", c["delivery"]))
        rows += _cpu("throughput", c.get("cpu_pct"), " (closed)")
        o = r.get("open")
        if o:
            best = o["best"]
            p99 = best["delivery"]["p99_ms"] if best else float("nan")
            rows.append(
                _row(
                    "throughput",
                    f"open loop: highest rate with p99 < {o['p99_limit_ms']:.0f} ms",
                    o["best_rate"],
                    f"{_num(o['best_rate'])}/s (p99 {_num(p99, 1)} ms; "
                    f"next {_num(o['first_failing_rate'])}/s failed)",
                    ">= 10,000/s, p99 < 50 ms",
                    o["best_rate"] >= 10_000,
                )
            )
            if best:
                rows.append(_lat("throughput", "at that rate, delivery", best["delivery"]))
                rows += _cpu("throughput", best.get("cpu_pct"), " (at that rate)")
            steps = ", ".join(
                f"{_num(s['rate'])}:{_num(s['delivery']['p99_ms'], 1)}ms" + ("" if s["ok"] else "x")
                for s in o["steps"]
            )
            rows.append(_row("throughput", "open-loop steps (rate: p99)", o["steps"], steps))
    if "fanout" in sc and "error" not in sc["fanout"]:
        r = sc["fanout"]
        rows.append(
            _row(
                "fanout",
                f"{r['members']} members, deliveries/s",
                r["delivered_per_s"],
                _num(r["delivered_per_s"]),
                ">= 50,000/s",
                r["delivered_per_s"] >= 50_000,
            )
        )
        rows.append(_lat("fanout", "delivery", r["delivery"]))
        rows += _cpu("fanout", r.get("cpu_pct"))
    for name in ("push", "push_web"):
        if name in sc and "error" not in sc[name]:
            rows += _pushes(name, sc[name])
    if "push_one" in sc and "error" not in sc["push_one"]:
        r = sc["push_one"]
        s = r["commit_to_accepted"]
        rows.append(
            _row(
                "push_one",
                f"commit to accepted, 1 offline user ({r['messages']}) p50/p95 ms",
                s,
                f"{_num(s['p50_ms'], 2)} / {_num(s['p95_ms'], 2)}"
                + (f" ({r['missing']} not accepted)" if r["missing"] else ""),
            )
        )
        rows += _cpu("push_one", r.get("cpu_pct"))
    if "connections" in sc and "error" not in sc["connections"]:
        r = sc["connections"]
        kb = r["kb_per_connection"]
        rows.append(
            _row(
                "connections",
                f"{_num(r['opened'])} idle sockets: memory per connection",
                kb,
                f"{_num(kb, 1)} KB "
                f"(RSS {_num(r['rss_before_mb'])} -> {_num(r['rss_after_mb'])} MB)",
                "< 30 KB",
                kb < 30 and r["opened"] == r["wanted"],
            )
        )
        rows.append(
            _row(
                "connections",
                f"heartbeat CPU (ping every {r['ping_interval_s']:.0f} s each)",
                r["heartbeat_cpu_pct"],
                f"{_num(r['heartbeat_cpu_pct'], 2)} % of a core over {_num(r['idle_seconds'])} s "
                f"({r['pongs']:,} pongs)",
            )
        )
        rows.append(
            _row(
                "connections",
                "connects/s (handshake p99)",
                r["connects_per_s"],
                f"{_num(r['connects_per_s'])} ({_num(r['handshake']['p99_ms'], 1)} ms)",
            )
        )
    if "two_nodes" in sc and "error" not in sc["two_nodes"]:
        r = sc["two_nodes"]
        c = r["closed"]
        rows.append(
            _row(
                "two_nodes",
                "closed loop, every delivery cross-node: persisted/s",
                c["persisted_per_s"],
                f"{_num(c['persisted_per_s'])} (delivered {_num(c['delivered_per_s'])}/s)",
            )
        )
        rows.append(_lat("two_nodes", "closed loop delivery", c["delivery"]))
        rows += _cpu("two_nodes", c.get("cpu_pct"), " (closed)")
        if r.get("latency"):
            rows.append(_lat("two_nodes", "cross-node latency", r["latency"]["delivery"]))
        redis = r.get("redis")
        if redis:
            rows.append(
                _row(
                    "two_nodes",
                    "Redis commands per message (scripts' calls included)",
                    redis["per_message"],
                    f"{_num(redis['per_message'], 2)} "
                    f"({_num(redis['commands'])} / {_num(redis['messages'])} messages)",
                )
            )
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(redis["by_command"].items())[:6])
            rows.append(_row("two_nodes", "  of which, per message", redis["by_command"], top))
    if "redis_outage" in sc and "error" not in sc["redis_outage"]:
        r = sc["redis_outage"]
        before, during, after = r["before"], r["during"], r["after"]
        ratio = r["during_over_before"]
        rows.append(
            _row(
                "redis_outage",
                f"acked/s before / Redis killed ({during['seconds']:.0f} s) / after",
                [before["acked_per_s"], during["acked_per_s"], after["acked_per_s"]],
                f"{_num(before['acked_per_s'])} / {_num(during['acked_per_s'])} / "
                f"{_num(after['acked_per_s'])} (during/before {_num(ratio, 2)})",
                "during >= half of before",
                ratio is not None and ratio >= 0.5,
            )
        )
        if during["error_frames_per_s"] or r.get("errors"):
            rows.append(
                _row(
                    "redis_outage",
                    "error frames (by code)",
                    r.get("errors"),
                    ", ".join(f"{k} {v}" for k, v in (r.get("errors") or {}).items()) or "-",
                )
            )
        rows += _cpu("redis_outage", before.get("cpu_pct"), " (before)")
        rows += _cpu("redis_outage", during.get("cpu_pct"), " (during)")
    if "search" in sc and "error" not in sc["search"]:
        r = sc["search"]
        rows.append(
            _row(
                "search",
                "history searched",
                r["messages"],
                f"{_num(r['messages'])} messages; the searcher's "
                f"{_num(r['searcher_messages'])} in {r['searcher_conversations']} conversations",
            )
        )
        for kind, s in r["latency"].items():
            p50 = s["p50_ms"]
            rows.append(_lat("search", kind, s, "p50 < 20 ms", p50 < 20))
    if "uploads" in sc and "error" not in sc["uploads"]:
        r = sc["uploads"]
        for store in ("local", "s3"):
            s = r[store]
            for way in ("upload", "download"):
                rate = s[f"{way}_mb_per_s"]
                rows.append(
                    _row(
                        "uploads",
                        f"{store}: {way} of {_num(r['file_mb'])} MB, MB/s median (min-max)",
                        rate,
                        f"{_num(rate['median'])} ({_num(rate['min'])}-{_num(rate['max'])})",
                    )
                )
            m = s["upload_memory"]
            growth = m["rss_growth_mib"]
            rows.append(
                _row(
                    "uploads",
                    f"{store}: node RSS growth during a {_num(m['file_mb'])} MB upload",
                    m,
                    f"{_num(growth)} MiB (peak {_num(m['rss_peak_mib'])} MiB)",
                    "< 32 MiB (flat)",
                    growth < 32,
                )
            )
    if "admin_stats" in sc and "error" not in sc["admin_stats"]:
        r = sc["admin_stats"]
        rows.append(
            _row(
                "admin_stats",
                "push records, rollup of a year",
                r,
                f"{_num(r['push_attempts'])} deliveries; rolled up in "
                f"{_num(r['rollup_seconds'])} s to {_num(r['rollup_rows'])} rows",
            )
        )
        month = r["days_30"]
        rows.append(
            _lat("admin_stats", "stats?days=30", month, "p95 < 200 ms", month["p95_ms"] < 200)
        )
        rows.append(_lat("admin_stats", "stats?days=365", r["days_365"]))
    if "email_digests" in sc and "error" not in sc["email_digests"]:
        r = sc["email_digests"]
        alone = r["run_alone"]
        rows.append(
            _row(
                "email_digests",
                f"daily run, {r['users']:,} users ({r['users_with_mail']:,} mailed): seconds",
                alone,
                f"{_num(alone['seconds'], 2)} s, {_num(r['emails_per_s'])} emails/s",
                "< 60 s",
                r["under_60s"],
            )
        )
        rows.append(_lat("email_digests", "message latency idle", r["latency_idle"]))
        during = r["latency_during_digests"]
        rows.append(
            _lat(
                "email_digests",
                "message latency during a run",
                during,
                "p99 < 50 ms",
                r["p99_under_50ms_during"],
            )
        )
    if "scheduled" in sc and "error" not in sc["scheduled"]:
        r = sc["scheduled"]
        rows.append(
            _row(
                "scheduled",
                f"{_num(r['messages'])} due in one second: all delivered after",
                r,
                f"{_num(r['all_delivered_after_due_s'], 2)} s (committed "
                f"{_num(r['all_committed_after_due_s'], 2)} s, first "
                f"{_num(r['first_after_due_s'], 2)} s)",
                "< 5 s",
                r["under_5s"],
            )
        )
    if "announcement" in sc and "error" not in sc["announcement"]:
        r = sc["announcement"]
        rows.append(
            _row(
                "announcement",
                f"to {r['users']:,} users ({r['online']} online): seconds to done",
                r["done_seconds"],
                _num(r["done_seconds"], 2),
                "< 60 s",
                r["report"].get("status") == "done" and r["done_seconds"] < 60,
            )
        )
        during = r["during_delivery"]
        rows.append(
            _lat(
                "announcement",
                "message latency during",
                during,
                "p99 < 50 ms",
                during["p99_ms"] < 50,
            )
        )
        if "during_ack" in r:
            rows.append(_lat("announcement", "send to ack (commit) during", r["during_ack"]))
        rows.append(_lat("announcement", "message latency idle", r["idle_delivery"]))
        rows += _cpu("announcement", r.get("cpu_pct"), " (POST to done)")
    return rows


def print_table(report: dict[str, Any], rows: list[Row]) -> None:
    mode = "quick" if report["quick"] else "full"
    print(
        f"\nmessenger benchmark ({mode}, {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}), {report['wall_seconds']:.0f} s"
    )
    widths = (12, 52, 44, 26)
    header = ("scenario", "figure", "value", "target")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  met")
    print("-" * (sum(widths) + 2 * len(widths) + 3))
    last = ""
    for r in rows:
        scenario = r["scenario"] if r["scenario"] != last else ""
        last = r["scenario"]
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        cells = (scenario, r["figure"], r["text"], r["target"])
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + f"  {met}")
