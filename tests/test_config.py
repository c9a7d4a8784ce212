"""Configs: the examples load, and every bad config names file, line and key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import BIN, ROOT

from agent import config as agent_config
from agent.confload import ConfigErrors
from collector import config as collector_config

CONFIGS = Path(__file__).parent / "configs"


def test_example_configs_load_with_documented_values() -> None:
    a = agent_config.load(ROOT / "agent" / "example.yml")
    assert a.node == "stiftsplatz" and a.site == "maikerwe-2026"
    assert a.collector.report_interval == 2 and a.spool.max_age == 604800
    assert [p.target for p in a.probes.tcp] == ["127.0.0.1:9630"]
    c = collector_config.load(ROOT / "collector" / "example.yml")
    assert c.listen.port == 9630 and c.stale_after == 60 and "stiftsplatz" in c.agents


def test_defaults_apply_when_keys_are_left_out() -> None:
    a = agent_config.loads("node: n1\nsite: s1\nprobes: {tcp: [{target: 'h:1'}]}\n")
    assert a.collector.url == "http://127.0.0.1:9630/api/v1/reports"
    assert a.probes.tcp[0].interval == 10.0 and a.probes.tcp[0].timeout == 3.0


@pytest.mark.parametrize("fixture", sorted(p.name for p in CONFIGS.glob("invalid-*.yml")))
def test_invalid_config_gives_exact_errors_and_exit_2(fixture: str) -> None:
    path = CONFIGS / fixture
    expected = (CONFIGS / fixture.replace(".yml", ".expected")).read_text().splitlines()
    prog = "mogli-collector" if "collector" in fixture else "mogli-agent"
    r = subprocess.run([str(BIN / prog), "check-config", "-c", str(path)], capture_output=True, text=True,
                       cwd=CONFIGS)
    assert r.returncode == 2, r
    got = [line.replace(str(CONFIGS) + "/", "") for line in r.stderr.splitlines()[:-1]]
    assert got == expected
    assert r.stderr.splitlines()[-1] == f"{len(expected)} error(s)"


def test_three_errors_in_one_file_are_all_reported() -> None:
    with pytest.raises(ConfigErrors) as e:
        agent_config.load(CONFIGS / "invalid-three-errors.yml")
    assert [(err.line, err.key) for err in e.value.errors] == [
        (3, "colector"), (6, "spool.max_bytes"), (10, "probes.tcp[0].interval")]


def test_duplicate_target_labels_are_rejected() -> None:
    with pytest.raises(ConfigErrors) as e:
        agent_config.loads(
            "node: n\nsite: s\nprobes:\n  tcp:\n    - {target: 'a:1'}\n    - {target: 'b:1', name: 'a:1'}\n"
        )
    assert "duplicate target 'a:1'" in str(e.value)


def test_check_config_ok_and_version() -> None:
    for prog, cfg in (("mogli-agent", "agent"), ("mogli-collector", "collector")):
        r = subprocess.run([str(BIN / prog), "check-config", "-c", str(ROOT / cfg / "example.yml")],
                           capture_output=True, text=True)
        assert (r.returncode, r.stdout) == (0, "OK\n")
        v = subprocess.run([str(BIN / prog), "--version"], capture_output=True, text=True)
        assert v.returncode == 0 and v.stdout.startswith(prog + " 0.")


def test_missing_file_is_a_clear_error() -> None:
    r = subprocess.run([str(BIN / "mogli-agent"), "check-config", "-c", "/nonexistent.yml"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "/nonexistent.yml:0: cannot read" in r.stderr
