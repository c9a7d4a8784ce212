"""Active uplink: which interface and gateway the default route uses, per address family.

``mogli_uplink_info{interface, gateway, family, uplink}`` is 1 for the route in use. When the route
changes, the previous route's series is reported once more with 0 (so it does not linger at 1 on the
collector until it goes stale) and ``mogli_uplink_changes_total{family}`` counts the change. No
default route at all is reported as the state ``interface="", gateway="", uplink="none"`` (value 1);
losing the route is not a change by itself, but coming back through a different interface or
gateway than before is.
State lives on the probe's config object, so it lasts as long as the agent runs.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.confload import check
from agent.probes.base import ProbeResult

Family = Literal["ipv4", "ipv6"]
_AF: dict[str, int] = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
Route = tuple[str, str]  # (interface, gateway)
NO_ROUTE: Route = ("", "")


def _names(v: dict[str, str]) -> str | None:
    bad = [f"{k}: {n}" for k, n in v.items() if not n or len(n) > 32]
    return f"names must be 1..32 characters: {bad}" if bad else None


@dataclass(frozen=True)
class UplinkConfig:
    target: str = field(default="default", metadata=check(pattern=r"[A-Za-z0-9_.:-]{1,64}"))  # a label
    name: str = ""
    interval: float = field(default=5.0, metadata=check(min=0.5, max=86400))
    timeout: float = field(default=2.0, metadata=check(min=0.1, max=300))
    families: list[Family] = field(default_factory=lambda: ["ipv4", "ipv6"], metadata=check(nonempty=True))
    # interface -> a name for the `uplink` label, e.g. {eth0: fibre, wwan0: lte}; default: the interface
    names: dict[str, str] = field(default_factory=dict, metadata=check(validate=_names))
    # last route seen per family, across runs (not a config key)
    state: dict[str, Route] = field(default_factory=dict, init=False, repr=False, compare=False)


def default_routes(gateways: dict[Any, Any]) -> dict[str, Route]:
    """netifaces.gateways() -> {family: (interface, gateway)} for the families with a default route."""
    default = gateways.get("default") or {}
    out: dict[str, Route] = {}
    for fam, af in _AF.items():
        entry = default.get(af)
        if entry:
            gw, iface = entry[0], entry[1]
            out[fam] = (str(iface), str(gw))
    return out


def observe(cfg: UplinkConfig, routes: dict[str, Route], result: ProbeResult) -> None:
    """Compare with the last run's routes; add info and change values to ``result``."""
    for fam in cfg.families:
        now = routes.get(fam, NO_ROUTE)
        before = cfg.state.get(fam)
        last_present = cfg.state.get(f"{fam}/present")
        if before is not None and before != now:
            result.gauge("mogli_uplink_info", 0.0, **_labels(cfg, fam, before))
        if now != NO_ROUTE:
            if last_present is not None and last_present != now:
                result.count("mogli_uplink_changes_total", 1.0, family=fam)
            cfg.state[f"{fam}/present"] = now
        result.count("mogli_uplink_changes_total", 0.0, family=fam)  # the series exists from the first run
        result.gauge("mogli_uplink_info", 1.0, **_labels(cfg, fam, now))
        cfg.state[fam] = now
        result.detail[fam] = f"{now[0]} via {now[1]}" if now != NO_ROUTE else "none"


def _labels(cfg: UplinkConfig, fam: str, route: Route) -> dict[str, str]:
    iface, gw = route
    uplink = "none" if route == NO_ROUTE else cfg.names.get(iface, iface)
    return {"interface": iface, "gateway": gw, "family": fam, "uplink": uplink}


async def run(cfg: UplinkConfig, result: ProbeResult) -> None:
    import netifaces  # netifaces-plus: reads the routing table over netlink, quick and non-blocking enough

    observe(cfg, default_routes(netifaces.gateways()), result)
