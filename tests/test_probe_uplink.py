"""Uplink probe: change tracking on netifaces-shaped data, and a real default-route failover in a namespace."""

from __future__ import annotations

import socket

import pytest
from netns_util import NetnsProbe, ip, namespaces, value, veth

from agent.probes.base import ProbeResult
from agent.probes.uplink import UplinkConfig, default_routes, observe


def _gw(v4: tuple[str, str] | None, v6: tuple[str, str] | None = None) -> dict[object, object]:
    """What netifaces.gateways() returns: {'default': {AF: (gateway, interface)}, AF: [...]}."""
    default: dict[int, tuple[str, str]] = {}
    if v4:
        default[socket.AF_INET] = v4
    if v6:
        default[socket.AF_INET6] = v6
    return {"default": default, socket.AF_INET: [(*v4, True)] if v4 else []}


def _run(cfg: UplinkConfig, gws: dict[object, object]) -> ProbeResult:
    r = ProbeResult()
    observe(cfg, default_routes(gws), r)
    return r


def _info(r: ProbeResult) -> dict[tuple[str, str, str], float]:
    return {(d["family"], d["interface"], d["uplink"]): v for n, lb, v in r.gauges if (d := dict(lb))}


def _changes(r: ProbeResult, fam: str) -> float:
    return sum(v for n, lb, v in r.counters if dict(lb)["family"] == fam)


def test_failover_counts_once_and_the_old_route_goes_to_zero() -> None:
    cfg = UplinkConfig(names={"eth0": "fibre", "wwan0": "lte"})
    r = _run(cfg, _gw(("192.0.2.1", "eth0"), ("fe80::1", "eth0")))
    assert _info(r) == {("ipv4", "eth0", "fibre"): 1, ("ipv6", "eth0", "fibre"): 1}
    assert _changes(r, "ipv4") == 0 and [lb for n, lb, v in r.counters]  # series exists from the first run
    assert _changes(_run(cfg, _gw(("192.0.2.1", "eth0"), ("fe80::1", "eth0"))), "ipv4") == 0
    r = _run(cfg, _gw(("198.51.100.1", "wwan0"), ("fe80::1", "eth0")))  # fibre cut: LTE takes over IPv4
    assert _info(r) == {("ipv4", "eth0", "fibre"): 0, ("ipv4", "wwan0", "lte"): 1, ("ipv6", "eth0", "fibre"): 1}
    assert (_changes(r, "ipv4"), _changes(r, "ipv6")) == (1, 0)
    r = _run(cfg, _gw(None, ("fe80::1", "eth0")))  # no IPv4 default route at all
    assert _info(r) == {("ipv4", "wwan0", "lte"): 0, ("ipv4", "", "none"): 1, ("ipv6", "eth0", "fibre"): 1}
    assert _changes(r, "ipv4") == 0
    r = _run(cfg, _gw(("198.51.100.1", "wwan0"), ("fe80::1", "eth0")))  # back on the same route: no change
    assert _changes(r, "ipv4") == 0 and _info(r)[("ipv4", "", "none")] == 0
    r = _run(cfg, _gw(("192.0.2.1", "eth0"), ("fe80::1", "eth0")))  # fibre repaired
    assert _changes(r, "ipv4") == 1


def test_only_configured_families_and_unnamed_interfaces() -> None:
    r = _run(UplinkConfig(families=["ipv4"]), _gw(("192.0.2.1", "enp1s0"), ("fe80::1", "enp1s0")))
    assert _info(r) == {("ipv4", "enp1s0", "enp1s0"): 1}


@pytest.mark.netns
@pytest.mark.real
def test_default_route_failover_in_a_namespace() -> None:
    with namespaces(2) as (a, b):
        veth(a, "mgfib0", b, "mgfib1", "10.199.81.1/30", "10.199.81.2/30")
        veth(a, "mglte0", b, "mglte1", "10.199.82.1/30", "10.199.82.2/30")
        ip("-n", a, "route", "add", "default", "via", "10.199.81.2", "dev", "mgfib0")
        probe = NetnsProbe(a, "uplink", {"target": "default", "families": ["ipv4", "ipv6"],
                                         "names": {"mgfib0": "fibre", "mglte0": "lte"}})
        try:
            s = probe.run()["samples"]
            assert value(s, "mogli_uplink_info", family="ipv4", interface="mgfib0", gateway="10.199.81.2",
                         uplink="fibre") == 1
            assert value(s, "mogli_uplink_info", family="ipv6", uplink="none") == 1
            assert value(s, "mogli_uplink_changes_total", family="ipv4") == 0
            ip("-n", a, "route", "replace", "default", "via", "10.199.82.2", "dev", "mglte0")
            s = probe.run()["samples"]
            assert value(s, "mogli_uplink_info", family="ipv4", interface="mglte0", uplink="lte") == 1
            assert value(s, "mogli_uplink_info", family="ipv4", interface="mgfib0") == 0
            assert value(s, "mogli_uplink_changes_total", family="ipv4") == 1
            assert value(s, "mogli_uplink_changes_total", family="ipv6") == 0
            ip("-n", a, "route", "replace", "default", "via", "10.199.81.2", "dev", "mgfib0")
            s = probe.run()["samples"]
            assert value(s, "mogli_uplink_changes_total", family="ipv4") == 2
            assert value(s, "mogli_uplink_info", family="ipv4", interface="mgfib0", uplink="fibre") == 1
        finally:
            probe.close()
