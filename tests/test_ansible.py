"""deploy/ansible: lint, syntax, preflight, and a real apply of the agent and collector roles to this machine.

The apply test installs into the real system paths (/opt/mogli-*, /etc/mogli-*, /var/lib/mogli-*, the systemd unit
directory) and creates the system users, as the roles do on a router; it needs root and removes all of it again.
Where systemd is not PID 1 (containers, this CI) the roles are told not to manage the services; the test then starts
the installed collector and agent itself, as their users, to show the deployed token and hash fit together.
"""

from __future__ import annotations

import dataclasses
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    BIN,
    ROOT,
    Proc,
    free_port,
    http_get,
    http_post,
    need,
    need_root,
    sample_value,
    tool,
    wait_until,
)

pytestmark = [pytest.mark.real]

ANSIBLE_DIR = ROOT / "deploy" / "ansible"
EXAMPLE_INV = ANSIBLE_DIR / "inventories" / "maikerwe-2026"
VAULT_PASS = EXAMPLE_INV / ".vault-pass-demo"
SYSTEMD = Path("/run/systemd/system").is_dir()
# The project's Alertmanager template once it is in the tree; until then the role's minimal stand-in.
AM_REAL = ROOT / "deploy" / "alertmanager" / "alertmanager.yml.j2"
AM_STANDIN = AM_REAL if AM_REAL.exists() else ANSIBLE_DIR / "roles/mogli_alertmanager/templates/alertmanager.yml.j2"
SKIP_CENTRAL_EXTRAS = "mogli_prometheus,mogli_alertmanager,mogli_grafana"

AGENT_PATHS = [Path("/opt/mogli-agent"), Path("/etc/mogli-agent"), Path("/var/lib/mogli-agent"),
               Path("/etc/systemd/system/mogli-agent.service"), Path("/etc/sysctl.d/60-mogli-agent.conf"),
               Path("/etc/sysctl.d/61-mogli-agent-ping.conf")]
RMEM_MAX = Path("/proc/sys/net/core/rmem_max")
DEBIAN_RMEM_MAX = 212992
PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")
DEBIAN_PING_GROUP_RANGE = "1 0"  # nobody may open unprivileged ICMP sockets
COLLECTOR_PATHS = [Path("/opt/mogli-collector"), Path("/etc/mogli-collector"), Path("/var/lib/mogli-collector"),
                   Path("/etc/systemd/system/mogli-collector.service")]
HARDENING = ["NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes"]
RECAP_RE = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def ansible_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_VAULT_PASSWORD_FILE": str(VAULT_PASS),
        "PATH": f"{BIN}:{env.get('PATH', '')}",
    })
    return env


def ansible(tmp: Path, prog: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    exe = BIN / prog
    need(exe.exists(), f"{prog} is not installed in the virtualenv (pip install -e '.[dev]')")
    return subprocess.run([str(exe), *args], cwd=ANSIBLE_DIR, env=ansible_env(tmp), capture_output=True, text=True,
                          timeout=timeout)


def recap(out: str) -> dict[str, dict[str, int]]:
    return {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
            for m in RECAP_RE.finditer(out)}


def collector_knows_inventory_key() -> bool:
    from collector.config import CollectorConfig

    return "inventory" in {f.name for f in dataclasses.fields(CollectorConfig)}


def write_inventory(path: Path, *, agents: dict[str, dict[str, Any]], cameras: dict[str, dict[str, Any]],
                    common: dict[str, Any]) -> Path:
    inv = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "/usr/bin/python3",
                "mogli_site": {"id": "ci-fest", "title": "CI Fest", "lat": 49.4447, "lon": 7.769},
                "mogli_cameras": cameras,
                **common,
            },
            "children": {
                "mogli_agents": {"hosts": agents},
                "mogli_central": {"hosts": {"ci-central": {}}},
            },
        }
    }
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------------------
# lint and syntax


def test_ansible_lint_production_profile_is_clean(tmp_path: Path) -> None:
    r = ansible(tmp_path, "ansible-lint", "--profile", "production", "--nocolor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Profile 'production' was required, and it passed" in r.stdout + r.stderr


def test_site_playbook_syntax_check_with_example_inventory(tmp_path: Path) -> None:
    r = ansible(tmp_path, "ansible-playbook", "--syntax-check", "-i", str(EXAMPLE_INV), "site.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_inventory_is_complete_and_vaulted(tmp_path: Path) -> None:
    """Six cases with coordinates, every camera on one of them, every secret only in the encrypted vault."""
    vault = EXAMPLE_INV / "group_vars" / "all" / "vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    r = ansible(tmp_path, "ansible-inventory", "-i", str(EXAMPLE_INV), "--list")
    assert r.returncode == 0, r.stderr
    inv = json.loads(r.stdout)
    agents = inv["mogli_agents"]["hosts"]
    assert sorted(agents) == sorted(["stiftsplatz", "schillerplatz", "martinsplatz", "rathaus", "fruchthalle",
                                     "pfalztheater"])
    hv = inv["_meta"]["hostvars"]
    for node in agents:
        assert 49.43 < hv[node]["mogli_agent_lat"] < 49.46 and 7.76 < hv[node]["mogli_agent_lon"] < 7.78, node
        assert hv[node]["mogli_agent_uplinks"], node
    # tokens resolve from the vault and are distinct
    r = ansible(tmp_path, "ansible", "-i", str(EXAMPLE_INV), "mogli_agents", "-c", "local",
                "-m", "ansible.builtin.debug", "-a", "msg={{ mogli_agent_token | hash('sha256') }}", "-o")
    assert r.returncode == 0, r.stdout + r.stderr
    hashes = re.findall(r'"msg": "([0-9a-f]{64})"', r.stdout)
    assert len(set(hashes)) == 6, r.stdout


def test_example_inventory_passes_preflight(tmp_path: Path) -> None:
    """`--tags preflight` checks an inventory without changing anything (every host simulated locally here)."""
    r = ansible(tmp_path, "ansible-playbook", "-i", str(EXAMPLE_INV), "site.yml", "--tags", "preflight",
                "-c", "local", "-e", "ansible_python_interpreter=/usr/bin/python3",
                "-e", f"mogli_alertmanager_config_template={AM_STANDIN}",
                "-e", json.dumps({"mogli_agent_service_manage": SYSTEMD, "mogli_collector_service_manage": SYSTEMD}))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "TASK [mogli_agent : Preflight | every camera is on a defined node" in out
    assert "TASK [mogli_alertmanager : Preflight | someone gets the alerts" in out
    rc = recap(out)
    assert len(rc) == 7 and all(v["changed"] == 0 and v["failed"] == 0 for v in rc.values()), out
    assert "PLAY [Operations centre | collector]" in out and "TASK [mogli_collector : Install" not in out


ROLES = ["mogli_agent", "mogli_collector", "mogli_prometheus", "mogli_alertmanager", "mogli_grafana"]


@pytest.mark.parametrize("role", ROLES)
def test_every_public_variable_has_an_argument_spec(role: str) -> None:
    """defaults/ holds <role>_* only, vars/ _<role>_* only, and meta/argument_specs.yml documents each public one
    (plus the required ones that have no default) with a type and a description."""
    d = ANSIBLE_DIR / "roles" / role
    defaults = yaml.safe_load((d / "defaults" / "main.yml").read_text()) or {}
    internal = yaml.safe_load((d / "vars" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((d / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    assert all(k.startswith(f"{role}_") for k in defaults), sorted(defaults)
    assert all(k.startswith(f"_{role}_") for k in internal), sorted(internal)
    assert set(defaults) == {k for k, v in options.items() if not v.get("required")}, set(defaults) ^ set(options)
    for name, opt in options.items():
        assert opt.get("type") and opt.get("description"), name
        if name in defaults:
            assert opt.get("default") == defaults[name], name
    assert specs["preflight"]["options"] == options, "site.yml's preflight entry point checks the same variables"
    registered = set(re.findall(r"register: (\S+)", "".join(p.read_text() for p in (d / "tasks").glob("*.yml"))))
    assert all(r.startswith(f"__{role}_") for r in registered), registered


# --------------------------------------------------------------------------------------------------------------
# preflight: a broken inventory is refused before any host is changed

GOOD_AGENT = {"mogli_agent_title": "Good", "mogli_agent_lat": 49.4443, "mogli_agent_lon": 7.7689,
              "mogli_agent_token": "good-token-0123456789abcdef"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("camera-on-undefined-node", "camera cam-ghost-1 is on node ghost, which is not a node of group mogli_agents"),
        ("node-without-coordinates", "missing required arguments: mogli_agent_lat, mogli_agent_lon"),
        ("node-without-token", "node bad-node: no usable token"),
        ("duplicate-node-id", "node id good-node is used by more than one host in group mogli_agents"),
    ],
)
def test_preflight_refuses_broken_inventory_before_any_change(tmp_path: Path, case: str, expected: str) -> None:
    bad: dict[str, Any] = dict(GOOD_AGENT, mogli_agent_token="bad-token-0123456789abcdef")
    cameras = {"cam-good-1": {"node": "good-node", "title": "Good cam", "lat": 49.4, "lon": 7.7, "host": "127.0.0.1"}}
    if case == "camera-on-undefined-node":
        cameras["cam-ghost-1"] = {"node": "ghost", "title": "Ghost", "lat": 49.4, "lon": 7.7, "host": "127.0.0.1"}
    elif case == "node-without-coordinates":
        del bad["mogli_agent_lat"], bad["mogli_agent_lon"]
    elif case == "node-without-token":
        bad["mogli_agent_token"] = ""  # what group_vars/all/vars.yml gives a node missing from the vault
    else:
        bad["mogli_agent_node"] = "good-node"
    # Every path the roles would write goes to tmp, so "nothing changed" is visible on disk too.
    paths = {f"mogli_{r}_{k}": str(tmp_path / f"{r}-{k}") for r in ("agent", "collector")
             for k in ("install_dir", "config_dir")}
    inv = write_inventory(tmp_path / "hosts.yml", agents={"good-node": GOOD_AGENT, "bad-node": bad}, cameras=cameras,
                          common={**paths, "mogli_agent_service_manage": False,
                                  "mogli_collector_service_manage": False,
                                  "mogli_agent_user": "mogli-ci-nobody", "mogli_collector_user": "mogli-ci-nobody"})
    r = ansible(tmp_path, "ansible-playbook", "-i", str(inv), "site.yml", "--skip-tags", SKIP_CENTRAL_EXTRAS)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert expected in out, out
    assert "bad-node" in out, out
    # Only the preflight play ran; nothing was installed, no user was made.
    assert "PLAY [Operations centre" not in out and "PLAY [Edge routers" not in out, out
    assert all(v["changed"] == 0 for v in recap(out).values()), out
    assert not any(Path(p).exists() for p in paths.values())
    with pytest.raises(KeyError):
        pwd.getpwnam("mogli-ci-nobody")


# --------------------------------------------------------------------------------------------------------------
# the real apply


def _remove_installation() -> None:
    for unit in ("mogli-agent", "mogli-collector"):
        if SYSTEMD:
            subprocess.run(["systemctl", "disable", "--now", unit], capture_output=True)
    for p in AGENT_PATHS + COLLECTOR_PATHS:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    if SYSTEMD:
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
    for user in ("mogli-agent", "mogli-collector"):
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", user], capture_output=True)


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """site.yml applied twice to this machine (agent + collector roles), from a clean state."""
    need_root()
    tmp = tmp_path_factory.mktemp("ansible-apply")
    _remove_installation()
    port = free_port()
    token = "ci-edge-token-" + hashlib.sha256(os.urandom(16)).hexdigest()[:24]
    cameras = {
        "cam-ci-1": {"node": "ci-edge", "title": "CI Kamera Nord", "lat": 49.4445, "lon": 7.7688,
                     "host": "127.0.0.1", "rtsp_port": 8554, "username": "mogli", "password": "p@ss word"},
    }
    agent = {
        "mogli_agent_title": "CI Edge",
        "mogli_agent_lat": 49.4443,
        "mogli_agent_lon": 7.7689,
        "mogli_agent_role": "edge",
        "mogli_agent_token": token,
        "mogli_agent_uplinks": [{"name": "fibre", "interface": "lo", "gateway": "127.0.0.1"}],
        "mogli_agent_probes": {"tcp": [{"target": f"127.0.0.1:{port}", "name": "collector", "interval": 1}]},
        "mogli_agent_collector_url": f"http://127.0.0.1:{port}/api/v1/reports",
        "mogli_agent_report_interval": 0.5,
    }
    # Separate wheelhouses as by default; in tmp, built from this tree.
    common = {
        "mogli_agent_service_manage": SYSTEMD,
        "mogli_collector_service_manage": SYSTEMD,
        "mogli_agent_wheelhouse": str(tmp / "wheelhouse-agent"),
        "mogli_collector_wheelhouse": str(tmp / "wheelhouse-collector"),
        "mogli_agent_wheel_build_isolation": False,
        "mogli_collector_wheel_build_isolation": False,
        "mogli_collector_listen_host": "127.0.0.1",
        "mogli_collector_listen_port": port,
        "mogli_collector_inventory_in_config": collector_knows_inventory_key(),
    }
    inv = write_inventory(tmp / "hosts.yml", agents={"ci-edge": agent}, cameras=cameras, common=common)
    rmem_max, ping_range = RMEM_MAX.read_text(), PING_GROUP_RANGE.read_text()
    RMEM_MAX.write_text(f"{DEBIAN_RMEM_MAX}\n")  # as a router starts out: the role raises it
    PING_GROUP_RANGE.write_text(f"{DEBIAN_PING_GROUP_RANGE}\n")  # and lets the agent's group in
    try:
        runs = []
        for _ in range(2):
            r = ansible(tmp, "ansible-playbook", "-i", str(inv), "site.yml", "--skip-tags", SKIP_CENTRAL_EXTRAS)
            (tmp / f"run{len(runs) + 1}.log").write_text(r.stdout + r.stderr)
            assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
            runs.append(r.stdout)
        yield {"tmp": tmp, "port": port, "token": token, "runs": runs}
    finally:
        _remove_installation()
        RMEM_MAX.write_text(rmem_max)
        PING_GROUP_RANGE.write_text(ping_range.replace("\t", " "))


def test_second_run_changes_nothing(applied: dict[str, Any]) -> None:
    first, second = (recap(out) for out in applied["runs"])
    assert first["ci-edge"]["changed"] > 0 and first["ci-central"]["changed"] > 0, applied["runs"][0][-3000:]
    assert {h: v["changed"] for h, v in second.items()} == {"ci-edge": 0, "ci-central": 0}, applied["runs"][1]
    assert all(v["failed"] == 0 and v["unreachable"] == 0 for v in second.values())


def test_rendered_configs_pass_check_config(applied: dict[str, Any]) -> None:
    for prog, cfg in (("/opt/mogli-agent/venv/bin/mogli-agent", "/etc/mogli-agent/agent.yml"),
                      ("/opt/mogli-collector/venv/bin/mogli-collector", "/etc/mogli-collector/collector.yml")):
        r = subprocess.run([prog, "check-config", "-c", cfg], capture_output=True, text=True)
        assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr


def test_agent_config_comes_from_the_inventory(applied: dict[str, Any]) -> None:
    cfg = yaml.safe_load(Path("/etc/mogli-agent/agent.yml").read_text())
    assert (cfg["node"], cfg["site"]) == ("ci-edge", "ci-fest")
    assert cfg["collector"]["token_file"] == "/etc/mogli-agent/token"
    assert cfg["spool"]["path"] == "/var/lib/mogli-agent/spool.db"
    # the inventory's probe, plus one tcp probe to the RTSP port of the camera on this node
    assert {(p["name"], p["target"]) for p in cfg["probes"]["tcp"]} == {
        ("collector", f"127.0.0.1:{applied['port']}"), ("cam-ci-1", "127.0.0.1:8554")}
    # the camera's RTSP probe: credentials not in the URL nor the config, the password in a 0600 file
    (rtsp,) = cfg["probes"]["rtsp"]
    assert rtsp["target"] == "rtsp://127.0.0.1:8554/" and rtsp["username"] == "mogli"
    pw = Path(rtsp["password_file"])
    assert pw.read_text().strip() == "p@ss word" and _owner(pw) == ("mogli-agent", "mogli-agent", 0o600)
    assert "p@ss word" not in Path("/etc/mogli-agent/agent.yml").read_text()
    # each uplink gateway pinged under a name the uplink alert rules recognise
    assert [(p["name"], p["target"]) for p in cfg["probes"]["icmp"]] == [("uplink-fibre", "127.0.0.1")]


def test_collector_gets_token_hashes_and_inventory_file(applied: dict[str, Any]) -> None:
    cfg = yaml.safe_load(Path("/etc/mogli-collector/collector.yml").read_text())
    assert cfg["agents"] == {"ci-edge": {"token_sha256": hashlib.sha256(applied["token"].encode()).hexdigest()}}
    assert applied["token"] not in Path("/etc/mogli-collector/collector.yml").read_text()
    if collector_knows_inventory_key():
        assert cfg["inventory"] == "/etc/mogli-collector/inventory.yml"
    inv = yaml.safe_load(Path("/etc/mogli-collector/inventory.yml").read_text())
    assert inv == {
        "site": {"id": "ci-fest", "title": "CI Fest", "lat": 49.4447, "lon": 7.769},
        "nodes": {"ci-edge": {"title": "CI Edge", "lat": 49.4443, "lon": 7.7689, "role": "edge"}},
        "cameras": {"cam-ci-1": {"node": "ci-edge", "title": "CI Kamera Nord", "lat": 49.4445, "lon": 7.7688}},
    }


def _owner(p: Path) -> tuple[str, str, int]:
    st = p.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def test_icmp_receive_buffer_cap_is_raised_for_the_agent(applied: dict[str, Any]) -> None:
    """The agent has no CAP_NET_ADMIN: its ICMP socket's buffer is capped at net.core.rmem_max, which the role
    raises from Debian's 208 KiB to 4 MiB, now and at boot (docs/probes/icmp.md)."""
    assert int(RMEM_MAX.read_text()) == 4194304
    conf = Path("/etc/sysctl.d/60-mogli-agent.conf")
    assert _owner(conf) == ("root", "root", 0o644)
    assert "net.core.rmem_max = 4194304" in conf.read_text().splitlines()


def test_the_agents_group_may_open_unprivileged_icmp_sockets(applied: dict[str, Any]) -> None:
    """Debian lets nobody open ICMP datagram sockets (ping_group_range "1 0"); the role lets the agent's group in,
    now and at boot, so the ICMP engine uses them rather than raw sockets (docs/probes/icmp.md)."""
    gid = grp.getgrnam("mogli-agent").gr_gid
    assert [int(v) for v in PING_GROUP_RANGE.read_text().split()] == [gid, gid]
    conf = Path("/etc/sysctl.d/61-mogli-agent-ping.conf")
    assert _owner(conf) == ("root", "root", 0o644)
    assert f"net.ipv4.ping_group_range = {gid} {gid}" in conf.read_text().splitlines()
    r = subprocess.run(["setpriv", f"--regid={gid}", "--clear-groups", f"--reuid={pwd.getpwnam('mogli-agent').pw_uid}",
                        "--inh-caps=-all", "--bounding-set=-all", "/usr/bin/python3", "-c",
                        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr  # as the agent, with no capability at all


def test_users_files_and_permissions(applied: dict[str, Any]) -> None:
    for user in ("mogli-agent", "mogli-collector"):
        pw = pwd.getpwnam(user)
        assert pw.pw_shell == "/usr/sbin/nologin"
        assert pw.pw_uid < 1000, "a system user"
    assert _owner(Path("/etc/mogli-agent/token")) == ("mogli-agent", "mogli-agent", 0o600)
    assert Path("/etc/mogli-agent/token").read_text().strip() == applied["token"]
    assert _owner(Path("/etc/mogli-agent/agent.yml")) == ("root", "mogli-agent", 0o640)
    assert _owner(Path("/etc/mogli-agent")) == ("root", "mogli-agent", 0o750)
    assert _owner(Path("/var/lib/mogli-agent")) == ("mogli-agent", "mogli-agent", 0o750)
    assert _owner(Path("/etc/mogli-collector/collector.yml")) == ("root", "mogli-collector", 0o640)
    assert _owner(Path("/var/lib/mogli-collector")) == ("mogli-collector", "mogli-collector", 0o750)
    # the router got the wheels, not a build: everything came from the shipped wheelhouse
    wheels = sorted(p.name for p in Path("/opt/mogli-agent/wheels").iterdir())
    assert any(w.startswith("mogli_monitor-") for w in wheels) and any(w.startswith("aiohttp-") for w in wheels)
    assert Path("/opt/mogli-agent/venv/bin/mogli-agent").exists()
    # the service user can read its config and token; nobody else can
    runuser = tool("runuser")
    r = subprocess.run([runuser, "-u", "mogli-agent", "--", "/opt/mogli-agent/venv/bin/mogli-agent",
                        "check-config", "-c", "/etc/mogli-agent/agent.yml"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([runuser, "-u", "nobody", "--", "cat", "/etc/mogli-agent/token"], capture_output=True)
    assert r.returncode != 0


def test_units_are_hardened(applied: dict[str, Any]) -> None:
    agent = Path("/etc/systemd/system/mogli-agent.service").read_text().splitlines()
    collector = Path("/etc/systemd/system/mogli-collector.service").read_text().splitlines()
    for line in [*HARDENING, "AmbientCapabilities=CAP_NET_RAW", "CapabilityBoundingSet=CAP_NET_RAW",
                 "ReadWritePaths=/var/lib/mogli-agent", "StateDirectory=mogli-agent", "User=mogli-agent"]:
        assert line in agent, line
    for line in [*HARDENING, "AmbientCapabilities=", "CapabilityBoundingSet=",
                 "ReadWritePaths=/var/lib/mogli-collector", "StateDirectory=mogli-collector", "User=mogli-collector"]:
        assert line in collector, line
    assert not any("CAP_NET_RAW" in line for line in collector)
    analyze = shutil.which("systemd-analyze")
    if analyze:
        for unit in ("mogli-agent", "mogli-collector"):
            r = subprocess.run([analyze, "verify", f"/etc/systemd/system/{unit}.service"], capture_output=True,
                               text=True)
            complaints = [ln for ln in (r.stdout + r.stderr).splitlines() if f"{unit}.service" in ln]
            assert r.returncode == 0 and not complaints, r.stdout + r.stderr


def _run_deployed(applied: dict[str, Any], name: str) -> list[Proc]:
    """Without systemd, start the installed collector and agent as their users (with systemd the roles did)."""
    if SYSTEMD:
        return []
    runuser, tmp, port = tool("runuser"), applied["tmp"], applied["port"]
    collector = Proc([runuser, "-u", "mogli-collector", "--", "/opt/mogli-collector/venv/bin/mogli-collector", "run",
                      "-c", "/etc/mogli-collector/collector.yml"], tmp / f"collector-{name}.log")
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200 or not collector.alive(), 30,
               "deployed collector /healthz")
    assert collector.alive(), collector.output()
    agent = Proc([runuser, "-u", "mogli-agent", "--", "/opt/mogli-agent/venv/bin/mogli-agent", "run",
                  "-c", "/etc/mogli-agent/agent.yml"], tmp / f"agent-{name}.log")
    return [collector, agent]


def _wait_agent_up(port: int) -> None:
    def up() -> bool:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        return status == 200 and sample_value(body.decode(), "mogli_agent_up", node="ci-edge", site="ci-fest") == 1

    wait_until(up, 30, "mogli_agent_up{node=ci-edge} == 1 on the deployed collector")


def test_deployed_agent_reports_to_deployed_collector(applied: dict[str, Any]) -> None:
    """The token the agent got and the hash the collector got fit: the node shows up as up."""
    procs = _run_deployed(applied, "first")
    try:
        _wait_agent_up(applied["port"])
        assert Path("/var/lib/mogli-agent/spool.db").exists()
    finally:
        for p in reversed(procs):
            p.stop()


def test_token_rotation_as_documented(applied: dict[str, Any]) -> None:
    """docs/deploy.md: new token in the inventory, re-run with the configure tags for the node and the collector:
    only the token file and the collector config change, the old token is refused, the new one works."""
    tmp, port, old = applied["tmp"], applied["port"], applied["token"]
    new = "ci-edge-rotated-" + hashlib.sha256(os.urandom(16)).hexdigest()[:24]
    inv = tmp / "hosts.yml"
    inv.write_text(inv.read_text().replace(old, new))
    r = ansible(tmp, "ansible-playbook", "-i", str(inv), "site.yml", "--tags",
                "mogli_collector_configure,mogli_agent_configure", "--skip-tags", SKIP_CENTRAL_EXTRAS,
                "--limit", "ci-edge,ci-central")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert {h: v["changed"] for h, v in recap(out).items()} == {"ci-edge": 1, "ci-central": 1}, out
    assert "changed: [ci-edge]" in out.split("TASK [mogli_agent : Configure | token file")[1].split("TASK")[0]
    assert Path("/etc/mogli-agent/token").read_text().strip() == new
    procs = _run_deployed(applied, "rotated")
    try:
        status, _ = http_post(f"http://127.0.0.1:{port}/api/v1/reports", b"{}",
                              {"Authorization": f"Bearer {old}", "Content-Type": "application/json"})
        assert status == 401
        _wait_agent_up(port)
    finally:
        for p in reversed(procs):
            p.stop()


# --------------------------------------------------------------------------------------------------------------
# Prometheus and Alertmanager roles, applied with every path in tmp (the Debian packages are installed already)

RULES = """groups:
  - name: mogli-ci
    rules:
      - alert: MogliCiNodeDown
        expr: mogli_agent_up == 0
        for: 1m
        labels: {severity: critical}
        annotations: {summary: "node {{ $labels.node }} is down"}
"""


def test_prometheus_and_alertmanager_roles_render_checked_configs(tmp_path: Path) -> None:
    prometheus, amtool = tool("prometheus"), tool("amtool")
    tool("promtool")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "mogli-ci.yml").write_text(RULES)
    conf, am = tmp_path / "prometheus", tmp_path / "alertmanager"
    (conf / "rules" / "mogli").mkdir(parents=True)
    (conf / "rules" / "mogli" / "removed-from-project.yml").write_text("groups: []\n")
    (tmp_path / "am-templates").mkdir()
    (tmp_path / "am-templates" / "mogli.tmpl").write_text('{{ define "mogli.title" }}{{ .Status }}{{ end }}\n')
    port = free_port()
    central = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "/usr/bin/python3",
        "mogli_prometheus_install": False,
        "mogli_prometheus_service_manage": False,
        "mogli_prometheus_config_dir": str(conf),
        "mogli_prometheus_defaults_file": str(conf / "default"),
        "mogli_prometheus_rules_src": str(rules),
        "mogli_prometheus_listen_address": f"127.0.0.1:{port}",
        "mogli_alertmanager_install": False,
        "mogli_alertmanager_service_manage": False,
        "mogli_alertmanager_config_template": str(AM_STANDIN),
        "mogli_alertmanager_templates_src": str(tmp_path / "am-templates"),
        "mogli_alertmanager_config_file": str(am / "alertmanager.yml"),
        "mogli_alertmanager_templates_dir": str(am / "templates"),
        "mogli_alertmanager_defaults_file": str(am / "default"),
        "mogli_alertmanager_telegram_bot_token": "123456:ci-bot-token",
        "mogli_alertmanager_smtp": {"smarthost": "localhost:25", "from": "mogli@example.org"},
        "mogli_alertmanager_contacts": {"telegram_chat_ids": [-100123], "emails": ["leitstelle@example.org"],
                                        "webhooks": ["http://127.0.0.1:9/hook"]},
    }
    am.mkdir()
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"ci-central": central}}}))
    play = tmp_path / "central.yml"
    play.write_text(yaml.safe_dump([{"name": "central", "hosts": "ci-central", "gather_facts": False,
                                     "roles": ["mogli_prometheus", "mogli_alertmanager"]}]))
    r = ansible(tmp_path, "ansible-playbook", "-i", str(inv), str(play))
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]

    cfg = yaml.safe_load((conf / "prometheus.yml").read_text())
    assert cfg["storage"]["tsdb"]["out_of_order_time_window"] == "2h"
    assert cfg["rule_files"] == [f"{conf}/rules/mogli/*.yml"]
    assert sorted(p.name for p in (conf / "rules" / "mogli").iterdir()) == ["mogli-ci.yml"]
    assert cfg["global"]["scrape_interval"] == "5s"
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "mogli")
    assert job["honor_labels"] is True and job["static_configs"][0]["targets"] == ["127.0.0.1:9630"]
    args = re.fullmatch(r'ARGS="(.*)"', (conf / "default").read_text().splitlines()[-1])
    assert args, (conf / "default").read_text()
    assert "--web.enable-remote-write-receiver" in args[1].split()

    amcfg = yaml.safe_load((am / "alertmanager.yml").read_text())
    receivers = amcfg["receivers"]
    telegram = [t for r in receivers for t in r.get("telegram_configs", [])]
    assert telegram and all(t["bot_token"] == "123456:ci-bot-token" and t["chat_id"] == -100123 for t in telegram)
    assert {e["to"] for r in receivers for e in r.get("email_configs", [])} == {"leitstelle@example.org"}
    assert {w["url"] for r in receivers for w in r.get("webhook_configs", [])} == {"http://127.0.0.1:9/hook"}
    assert (am / "templates" / "mogli.tmpl").exists()
    r2 = subprocess.run([amtool, "check-config", str(am / "alertmanager.yml")], capture_output=True, text=True)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    if AM_STANDIN == AM_REAL:  # the role renders exactly what deploy/alertmanager/render.py renders
        r3 = subprocess.run([str(BIN / "python"), str(AM_REAL.parent / "render.py"), str(inv_vars(tmp_path, central))],
                            capture_output=True, text=True)
        assert r3.returncode == 0, r3.stderr
        assert yaml.safe_load(r3.stdout) == amcfg

    # The rendered config and flags start a real Prometheus that loads the rules and accepts remote write.
    (tmp_path / "data").mkdir()
    proc = Proc([prometheus, f"--config.file={conf / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
                 *args[1].split()], tmp_path / "prometheus.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_get(f"{url}/-/ready")[0] == 200 or not proc.alive(), 60, "prometheus ready")
        assert proc.alive(), proc.output()
        flags = json.loads(http_get(f"{url}/api/v1/status/flags")[1])["data"]
        assert flags["web.enable-remote-write-receiver"] == "true"
        groups = json.loads(http_get(f"{url}/api/v1/rules")[1])["data"]["groups"]
        assert [g["name"] for g in groups] == ["mogli-ci"]
        # an empty remote-write request is refused as bad input (400), not as "receiver disabled" (404)
        status, _ = http_post_raw(f"{url}/api/v1/write")
        assert status == 400
    finally:
        proc.stop()


def inv_vars(tmp: Path, host: dict[str, Any]) -> Path:
    p = tmp / "am-vars.yml"
    p.write_text(yaml.safe_dump({k: v for k, v in host.items() if k.startswith("mogli_alertmanager_")}))
    return p


def http_post_raw(url: str) -> tuple[int, bytes]:
    return http_post(url, b"", {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"})
