"""The Alertmanager config template: renders, amtool accepts it, messages in German and English, and a
real Alertmanager routes and inhibits the way docs/alerts.md says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from alerting import AM_DIR, Alertmanager, WebhookReceiver, render_am_config, webhook_only_vars
from helpers import http_post, tool, wait_until

EXAMPLE_VARS = AM_DIR / "example-vars.yml"


def _check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "am.yml"
    cfg.write_text(text)
    return subprocess.run([tool("amtool"), "check-config", str(cfg)], capture_output=True, text=True, timeout=60)


def test_checked_in_example_is_the_rendered_example_vars() -> None:
    rendered = render_am_config(yaml.safe_load(EXAMPLE_VARS.read_text()))
    assert rendered == (AM_DIR / "alertmanager.example.yml").read_text(), \
        "alertmanager.example.yml is stale: python3 deploy/alertmanager/render.py " \
        "deploy/alertmanager/example-vars.yml > deploy/alertmanager/alertmanager.example.yml"


@pytest.mark.real
def test_amtool_accepts_example_with_our_templates(tmp_path: Path) -> None:
    v = yaml.safe_load(EXAMPLE_VARS.read_text())
    v["mogli_alertmanager_templates_dir"] = str(AM_DIR / "templates")  # so amtool parses mogli.tmpl too
    r = _check_config(tmp_path, render_am_config(v))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9 receivers" in r.stdout and "6 inhibit rules" in r.stdout, r.stdout


@pytest.mark.real
@pytest.mark.parametrize("variables", [
    {},  # nothing configured: valid, pushes nowhere
    {"mogli_alertmanager_contacts": {"webhooks": ["http://127.0.0.1:9/x"]}},
    {"mogli_alertmanager_language": "en", "mogli_alertmanager_telegram_bot_token": "1:x",
     "mogli_alertmanager_contacts": {"telegram_chat_ids": [-1001]}},
], ids=["empty", "webhook-only", "telegram-en"])
def test_amtool_accepts_minimal_configs(tmp_path: Path, variables: dict[str, object]) -> None:
    r = _check_config(tmp_path, render_am_config(variables))
    assert r.returncode == 0, r.stdout + r.stderr


def test_language_is_chosen_per_site() -> None:
    cfg = yaml.safe_load(render_am_config(yaml.safe_load(EXAMPLE_VARS.read_text())))
    by_name = {r["name"]: r for r in cfg["receivers"]}
    assert "mogli.de.telegram" in by_name["site-maikerwe-2026-critical"]["telegram_configs"][0]["message"]
    assert "mogli.en.telegram" in by_name["site-altstadtfest-2026-critical"]["telegram_configs"][0]["message"]
    assert "mogli.de.subject" in by_name["default-critical"]["email_configs"][0]["headers"]["Subject"]
    en = yaml.safe_load(render_am_config({**yaml.safe_load(EXAMPLE_VARS.read_text()),
                                          "mogli_alertmanager_language": "en"}))
    assert "mogli.en.text" in {r["name"]: r for r in en["receivers"]}["default-info"]["email_configs"][0]["text"]


def test_render_script_reports_bad_variables(tmp_path: Path) -> None:
    bad = tmp_path / "vars.yml"
    bad.write_text("- just\n- a list\n")
    r = subprocess.run([sys.executable, str(AM_DIR / "render.py"), str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "must be a mapping" in r.stderr and "Traceback" not in r.stderr


_DATA = {
    "receiver": "x", "status": "firing", "externalURL": "http://ops.example:9093",
    "groupLabels": {"site": "maikerwe", "alertname": "MogliCameraFrozen"},
    "commonLabels": {"alertname": "MogliCameraFrozen", "severity": "critical", "site": "maikerwe"},
    "commonAnnotations": {},
    "alerts": [
        {"status": "firing", "startsAt": "2026-05-16T18:04:05Z", "endsAt": "0001-01-01T00:00:00Z",
         "labels": {"alertname": "MogliCameraFrozen", "severity": "critical", "camera": "stift-2", "node": "n1",
                    "site": "maikerwe", "title": "Stiftsplatz Süd"},
         "annotations": {"summary": "Camera stift-2 at Stiftsplatz Süd frozen: no new picture for 14s",
                         "summary_de": "Kamera stift-2 am Standort Stiftsplatz Süd eingefroren: "
                                       "seit 14s kein neues Bild",
                         "description": "Check first: the camera web page.",
                         "description_de": "Zuerst prüfen: die Weboberfläche der Kamera."}},
        {"status": "resolved", "startsAt": "2026-05-16T18:00:00Z", "endsAt": "2026-05-16T18:02:30Z",
         "labels": {"alertname": "MogliCameraFrozen", "severity": "critical", "camera": "stift-1", "node": "n1",
                    "site": "maikerwe", "title": "Stiftsplatz Nord"},
         "annotations": {"summary": "Camera stift-1 at Stiftsplatz Nord frozen: no new picture for 9s",
                         "summary_de": "Kamera stift-1 am Standort Stiftsplatz Nord eingefroren: "
                                       "seit 9s kein neues Bild",
                         "description": "x", "description_de": "x"}},
    ],
}


@pytest.mark.real
@pytest.mark.parametrize("lang,expected,unexpected", [
    ("de", ["🔴 Kamera stift-2 am Standort Stiftsplatz Süd eingefroren", "seit 16.05. 20:04:05",
            "Zuerst prüfen: die Weboberfläche", "✅ BEHOBEN: Kamera stift-1", "von 20:00:00 bis 20:02:30"],
     ["Camera", "since"]),
    ("en", ["🔴 Camera stift-2 at Stiftsplatz Süd frozen", "since May 16 20:04:05",
            "Check first: the camera web page", "✅ RESOLVED: Camera stift-1", "from 20:00:00 to 20:02:30"],
     ["Kamera", "seit"]),
])
def test_messages_name_camera_place_since_and_first_checks(tmp_path: Path, lang: str, expected: list[str],
                                                           unexpected: list[str]) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps(_DATA))
    out = {}
    for kind in ("telegram", "subject", "text"):
        r = subprocess.run(
            [tool("amtool"), "template", "render", f"--template.glob={AM_DIR / 'templates' / 'mogli.tmpl'}",
             f"--template.data={data}", f'--template.text={{{{ template "mogli.{lang}.{kind}" . }}}}'],
            capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "Europe/Berlin"})
        assert r.returncode == 0, r.stderr
        out[kind] = r.stdout
    for s in expected:
        assert s in out["telegram"], (s, out["telegram"])
        assert s in out["text"], (s, out["text"])
    for s in unexpected:
        assert s not in out["telegram"], (s, out["telegram"])
    assert out["subject"].startswith("[KRITISCH] 1 aktiv: Kamera stift-2" if lang == "de"
                                     else "[CRITICAL] 1 firing: Camera stift-2")
    assert "http://ops.example:9093/#/silences/new" in out["text"]


@pytest.mark.real
def test_silent_node_inhibits_its_cameras_not_others(tmp_path: Path) -> None:
    """NodeSilent on n2 mutes the camera hanging off n2; a camera on n3 and n2's own push still arrive."""
    rx = WebhookReceiver()
    am = Alertmanager(tmp_path, render_am_config(webhook_only_vars(rx.url)))
    try:
        def alert(name: str, sev: str, **labels: str) -> dict[str, object]:
            return {"labels": {"alertname": name, "severity": sev, "site": "testfest", **labels},
                    "annotations": {"summary": name}}

        batch = [alert("MogliNodeSilent", "critical", node="n2"),
                 alert("MogliCameraDown", "critical", node="n2", camera="schill-1"),
                 alert("MogliCameraDown", "critical", node="n3", camera="fackel-1"),
                 alert("MogliCameraFrozen", "critical", node="n3", camera="fackel-1")]
        status, body = http_post(f"{am.url}/api/v2/alerts", json.dumps(batch).encode(),
                                 {"Content-Type": "application/json"})
        assert status == 200, body
        wait_until(lambda: rx.alerts("firing", alertname="MogliNodeSilent")
                   and rx.alerts("firing", camera="fackel-1"), 30, "pushes for n2 and fackel-1")
        time.sleep(1)  # schill-1 shares fackel-1's group (site, alertname): it would be in that very push
        assert rx.alerts(camera="fackel-1", alertname="MogliCameraDown")
        assert not rx.alerts(camera="schill-1"), "the silent node's camera was pushed"
        assert not rx.alerts(alertname="MogliCameraFrozen"), "a down camera was also pushed as frozen"
        assert rx.pushes[0][1]["receiver"] == "default-critical"
    finally:
        am.stop()
        rx.stop()


@pytest.mark.real
def test_documented_amtool_silence_stops_the_push_for_that_node_only(tmp_path: Path) -> None:
    """docs/alerts.md: `amtool silence add site=... node=... --duration=... --comment=...` during set-up."""
    rx = WebhookReceiver()
    am = Alertmanager(tmp_path, render_am_config(webhook_only_vars(rx.url)))
    try:
        r = subprocess.run(
            [tool("amtool"), f"--alertmanager.url={am.url}", "silence", "add", "site=testfest", "node=n2",
             "--duration=1h", "--author=test", "--comment=Aufbau"],
            capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        batch = [{"labels": {"alertname": "MogliNodeSilent", "severity": "critical", "site": "testfest",
                             "node": n}, "annotations": {"summary": n}} for n in ("n2", "n3")]
        status, body = http_post(f"{am.url}/api/v2/alerts", json.dumps(batch).encode(),
                                 {"Content-Type": "application/json"})
        assert status == 200, body
        wait_until(lambda: rx.alerts("firing", node="n3"), 30, "push for n3")
        time.sleep(1)  # n2 shares n3's group (site, alertname): unsilenced it would be in that very push
        assert not rx.alerts(node="n2"), "the silenced node was pushed"
    finally:
        am.stop()
        rx.stop()
