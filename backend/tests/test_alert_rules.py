"""deploy/prometheus/alerts.yml: valid rules (promtool's word where it is installed,
a schema check always), each naming only metrics the node exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import app.metrics  # noqa: F401  (registers the node's metrics)

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
# The alerts the operations guide promises, each with what it is about.
EXPECTED = {
    "PushErrorRateHigh": "messenger_pushes_total",
    "PushProviderErrors": "messenger_pushes_total",
    "DeviceRegistrationFailures": "messenger_device_registration_failures_total",
    "CleanupFailed": "messenger_cleanup_failures_total",
    "CleanupNotRun": "messenger_cleanup_last_success_timestamp_seconds",
}
_DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        rules.extend(group["rules"])
    return rules


def _exported() -> set[str]:
    """Every series name the node's registry can produce."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names = set()
    for metric in REGISTRY.collect():
        for suffix in suffixes.get(metric.type, ("",)):
            names.add(metric.name + suffix)
    return names


def test_rules_follow_the_schema() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} == set(EXPECTED)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        if "for" in rule:
            assert _DURATION.fullmatch(rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip()


def test_each_alert_reads_exported_metrics() -> None:
    exported = _exported()
    for rule in _rules():
        named = set(re.findall(r"\bmessenger_[a-z0-9_]+", rule["expr"]))
        assert EXPECTED[rule["alert"]] in named, rule["alert"]
        assert named <= exported, (rule["alert"], named - exported)


def test_push_error_rate_threshold_is_five_percent() -> None:
    rule = next(r for r in _rules() if r["alert"] == "PushErrorRateHigh")
    assert re.search(r">\s*0\.05\s*$", rule["expr"].strip()) and "[10m]" in rule["expr"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in done.stdout


def _series(values: dict[tuple[str, str], int]) -> list[dict[str, str]]:
    """Counters growing by so many pushes a minute, by (provider, outcome)."""
    return [
        {
            "series": f'messenger_pushes_total{{provider="{p}", outcome="{o}"}}',
            "values": f"0+{n}x40",
        }
        for (p, o), n in values.items()
    ]


def _firing(alert: str, labels: dict[str, str], value: str) -> dict[str, Any]:
    """What promtool should see of a firing alert: its labels and rendered annotations."""
    rule = next(r for r in _rules() if r["alert"] == alert)
    annotations = {
        name: text.replace("{{ $value | humanizePercentage }}", value).replace(
            "{{ $labels.provider }}", labels.get("provider", "")
        )
        for name, text in rule["annotations"].items()
    }
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_push_alerts_fire_past_their_thresholds(tmp_path: Path) -> None:
    """promtool's rule unit tests: each push alert fires over its threshold, not under."""
    quiet = {  # fcm 10 % errors, apns 2 %: 30 in 1,100 (2.7 %) over all, under 20 % each
        ("fcm", "delivered"): 90,
        ("fcm", "failed"): 10,
        ("apns", "delivered"): 980,
        ("apns", "failed"): 20,
    }
    failing = {("fcm", "delivered"): 70, ("fcm", "gave_up"): 30}  # 30 %
    spec = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _series(quiet),
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": name, "exp_alerts": []}
                    for name in ("PushErrorRateHigh", "PushProviderErrors")
                ],
            },
            {
                "interval": "1m",
                "input_series": _series(failing),
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": "PushErrorRateHigh",
                        "exp_alerts": [_firing("PushErrorRateHigh", {}, "30%")],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "PushProviderErrors",
                        "exp_alerts": [_firing("PushProviderErrors", {"provider": "fcm"}, "30%")],
                    },
                ],
            },
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_dead_tokens_are_not_push_errors_and_registrations_count_server_failures(
    tmp_path: Path,
) -> None:
    """A wave of uninstalls (dead tokens) fires no push alert, and still leaves real
    errors visible; over 20 server-side registration failures in 15 minutes fire."""
    churn = {("fcm", "delivered"): 60, ("fcm", "dead_token"): 40}  # 40 % dead, no error
    # 8 failed of 100 that are not dead tokens: 8 %, though only 5 % of everything.
    hidden = {("fcm", "delivered"): 92, ("fcm", "failed"): 8, ("fcm", "dead_token"): 60}
    rule = next(r for r in _rules() if r["alert"] == "DeviceRegistrationFailures")
    spec = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _series(churn),
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": name, "exp_alerts": []}
                    for name in ("PushErrorRateHigh", "PushProviderErrors")
                ],
            },
            {
                "interval": "1m",
                "input_series": _series(hidden),
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": "PushErrorRateHigh",
                        "exp_alerts": [_firing("PushErrorRateHigh", {}, "8%")],
                    }
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {  # 2 a minute: 30 in 15 minutes
                        "series": 'messenger_device_registration_failures_total{code="error"}',
                        "values": "0+2x60",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "40m",
                        "alertname": "DeviceRegistrationFailures",
                        "exp_alerts": [
                            {
                                "exp_labels": rule["labels"],
                                "exp_annotations": {
                                    name: text.replace("{{ $value | humanize }}", "30")
                                    for name, text in rule["annotations"].items()
                                },
                            }
                        ],
                    }
                ],
            },
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
