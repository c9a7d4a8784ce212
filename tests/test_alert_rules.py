"""The shipped Prometheus rules: valid, unit-tested with promtool, every alert tested and bilingual.

The behaviour (fires, resolves, quiet on healthy data and on blips) lives in the promtool test files in
deploy/prometheus/tests/; this module runs them with the real promtool and checks that they cover every
alert. Mutation tests show the blip tests have teeth: shortening a hold time makes them fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT, tool

RULES = ROOT / "deploy" / "prometheus" / "rules"
TESTS = ROOT / "deploy" / "prometheus" / "tests"
RULE_FILES = sorted(RULES.glob("*.yml"))
TEST_FILES = sorted(TESTS.glob("*.yml"))
ANNOTATIONS = ("summary", "summary_de", "description", "description_de", "since")


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((RULES / "mogli-alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def _rule_tests() -> list[tuple[str, list[dict[str, Any]]]]:
    """(file name, alert_rule_test list) for every test case of every promtool test file."""
    out = []
    for f in TEST_FILES:
        for case in yaml.safe_load(f.read_text())["tests"]:
            out.append((f.name, case.get("alert_rule_test", [])))
    return out


def _seconds(d: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    total, num = 0, ""
    for ch in d:
        if ch.isdigit():
            num += ch
        else:
            total += int(num) * units[ch]
            num = ""
    return total


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.real
def test_promtool_check_rules_accepts_the_rule_files() -> None:
    assert len(RULE_FILES) == 2
    r = _promtool("check", "rules", *map(str, RULE_FILES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


@pytest.mark.real
@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    r = _promtool("test", "rules", str(test_file))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_fires_resolves_and_stays_quiet_in_a_promtool_test() -> None:
    """For each alert (and each severity of it): some test case expects it quiet, then firing, then gone."""
    wanted = {(r["alert"], r["labels"]["severity"]) for r in _alert_rules()}
    covered: set[tuple[str, str]] = set()
    for _file, checks in _rule_tests():
        for name, sev in wanted:
            times_quiet = [_seconds(c["eval_time"]) for c in checks
                           if c["alertname"] == name and not c.get("exp_alerts")]
            times_firing = [_seconds(c["eval_time"]) for c in checks
                            if c["alertname"] == name
                            and any(a["exp_labels"].get("severity") == sev for a in c.get("exp_alerts") or [])]
            if times_firing and any(t < min(times_firing) for t in times_quiet) \
                    and any(t > min(times_firing) for t in times_quiet):
                covered.add((name, sev))
    missing = sorted(wanted - covered)
    assert not missing, f"alerts without a promtool test that is quiet, fires and resolves: {missing}"


def test_every_alert_has_severity_and_both_languages() -> None:
    rules = _alert_rules()
    assert len(rules) >= 15
    for r in rules:
        name = r["alert"]
        assert r["labels"].get("severity") in ("critical", "warning", "info"), name
        ann = r.get("annotations", {})
        missing = [a for a in ANNOTATIONS if not ann.get(a)]
        assert not missing, f"{name} lacks annotations {missing}"
        assert ann["summary"] != ann["summary_de"] and ann["description"] != ann["description_de"], name
        # every alert except the collector's own names its node or camera and its place
        if name != "MogliCollectorDown":
            for a in ("summary", "summary_de"):
                assert "$labels.title" in ann[a], f"{name} {a} does not name the place"
            assert "$labels.node" in ann["description"] and "$labels.node" in ann["description_de"], name
            assert name in ann["since"], f"{name}: since annotation queries another alert"


# (rule to weaken, original text, weakened text, test file that must then fail, why)
MUTATIONS = [
    ("MogliNodeSilent", "time() - mogli_agent_last_report_timestamp_seconds > 12",
     "time() - mogli_agent_last_report_timestamp_seconds > 8", "alerts-node.yml", "a 15 s report gap pushes"),
    ("MogliTargetDown", "for: 10s", "for: 5s", "alerts-uplink.yml", "a two-scrape probe blip pushes"),
    ("MogliCameraLossy", "for: 40s", "for: 20s", "alerts-camera.yml", "a 5 s packet-loss blip pushes"),
    ("MogliCertExpiring", "for: 5m", "for: 1m", "alerts-uplink.yml", "a certificate seen for two minutes mails"),
]


@pytest.mark.real
@pytest.mark.parametrize("alert,old,new,test_file,why", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_blip_tests_catch_a_shorter_hold(tmp_path: Path, alert: str, old: str, new: str, test_file: str,
                                         why: str) -> None:
    shutil.copytree(RULES, tmp_path / "rules")
    shutil.copytree(TESTS, tmp_path / "tests")
    rules = tmp_path / "rules" / "mogli-alerts.yml"
    text = rules.read_text()
    start = text.index(f"- alert: {alert}\n")
    pos = text.index(old, start)
    rules.write_text(text[:pos] + new + text[pos + len(old):])
    r = _promtool("test", "rules", test_file, cwd=tmp_path / "tests")
    assert r.returncode != 0, f"weakened {alert} ({why}) but its promtool tests still pass"
    assert alert in r.stdout + r.stderr


@pytest.mark.real
def test_example_prometheus_config_loads_the_rules_with_5s_intervals() -> None:
    cfg = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"
    r = _promtool("check", "config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 2 rule files found" in r.stdout + r.stderr, r.stdout + r.stderr
    g = yaml.safe_load(cfg.read_text())["global"]
    assert g == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    for f in RULE_FILES:
        assert all(grp["interval"] == "5s" for grp in yaml.safe_load(f.read_text())["groups"]), f
