"""mogli-agent: run, check-config, probe."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import __version__

# asyncio, the config loader (yaml) and the probe registry are imported by the commands that use them:
# analyze-pcap then starts in ~0.1 s of CPU instead of ~0.8 s (its speed is measured on the whole process)

EXIT_CONFIG = 2
ICMP_JSON_FIELDS = ("target", "sent", "received", "loss_ratio", "rtt_min_s", "rtt_avg_s", "rtt_max_s",
                    "rtt_stddev_s", "jitter_s")


class _ProbeKinds:
    """The probe kinds, for argparse ``choices``, imported only when the ``probe`` command checks or lists them:
    the probe modules pull in aiohttp, psutil and more (~0.6 s of CPU at start-up), which ``analyze-pcap``
    does not need (``metavar`` keeps argparse from listing them while it builds the parser)."""

    def __iter__(self) -> Iterator[str]:
        from agent.probes import PROBES

        return iter(sorted(PROBES))

    def __contains__(self, kind: object) -> bool:
        from agent.probes import PROBES

        return kind in PROBES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mogli-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"mogli-agent {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure and report until stopped")
    r.add_argument("-c", "--config", required=True)
    c = sub.add_parser("check-config", help="validate a config file; print OK or every error")
    c.add_argument("-c", "--config", required=True)
    pr = sub.add_parser("probe", help="run probes once and print the results")
    pr.add_argument("-c", "--config", help="run every probe of this config once (with --once)")
    pr.add_argument("--once", action="store_true", help="one round of every configured probe")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    pr.add_argument("kind", nargs="?", choices=_ProbeKinds(), metavar="KIND",
                    help="ad hoc probe kind: %(choices)s")
    pr.add_argument("target", nargs="?", help="ad hoc target (tcp: HOST:PORT, icmp: address or host name, "
                    "rtsp: rtsp://HOST[:PORT]/PATH)")
    pr.add_argument("--timeout", type=float,
                    help="seconds (default: the kind's default; icmp: the wait for each reply, default 2)")
    pr.add_argument("--count", type=int, default=5, help="icmp: echo requests to send (default 5)")
    pr.add_argument("--interval", type=float, default=1.0, help="icmp: seconds between requests (default 1)")
    pr.add_argument("--play-seconds", type=float, help="rtsp: PLAY this long and measure the stream")
    pr.add_argument("--username", help="rtsp: user name")
    pr.add_argument("--password-file", help="rtsp: file holding the password")
    pr.add_argument("--interface", help="rtp: the interface to capture on (the first run listens timeout/2 s)")
    pr.add_argument("--tls", action="store_true", help="tcp: a TLS handshake after connecting (certificate expiry)")
    pr.add_argument("--insecure", action="store_true",
                    help="tcp --tls, https: do not verify the certificate (its expiry is still reported)")
    a = sub.add_parser("analyze-pcap", help="RTP stream statistics of a pcap/pcapng capture")
    a.add_argument("file", help="capture file (pcap or pcapng)")
    a.add_argument("--json", action="store_true", help='print {"streams": [...]}')
    a.add_argument("--clock-rate", type=_positive, default=0.0, metavar="HZ",
                   help="RTP clock rate for dynamic payload types 96-127 (e.g. 90000 for video); "
                        "without it their jitter is not computed")
    a.add_argument("--stall-gap", type=_positive, default=1.0, metavar="S",
                   help="count gaps between packets of a stream longer than this as stalls (default 1.0 s)")
    return p


def _positive(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if not 0 < f < 1e12:
        raise argparse.ArgumentTypeError(f"{v!r} must be > 0")
    return f


def _load(path: str) -> Any:
    from agent import config

    return config.load(path)


def cmd_check(args: argparse.Namespace) -> int:
    from agent.confload import ConfigErrors

    try:
        _load(args.config)
    except ConfigErrors as e:
        return e.print()
    print("OK")
    return 0


def read_token(path: str) -> str:
    if not path:
        return ""
    p = Path(path)
    token = p.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"{path}: token file is empty")
    if p.stat().st_mode & 0o077:
        logging.getLogger("mogli.agent").warning("%s is readable by group or others; chmod 600 it", path)
    return token


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import signal

    from agent.confload import ConfigErrors
    from agent.runner import Agent

    try:
        cfg = _load(args.config)
    except ConfigErrors as e:
        return e.print()
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        token = read_token(cfg.collector.token_file)
    except (OSError, ValueError) as e:
        print(f"{args.config}: collector.token_file: {e}", file=sys.stderr)
        return EXIT_CONFIG
    from agent import hugepages

    try:
        hugepages.setting()  # checked before anything starts
    except ValueError as e:
        print(f"environment: {e}", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> None:
        agent = Agent(cfg, token)
        task = asyncio.create_task(agent.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import asyncio

    from agent.config import probe_list
    from agent.confload import ConfigErrors, load_text
    from agent.probes import PROBES
    from agent.runner import Outcome, run_probe

    jobs: list[tuple[str, Any]] = []
    if args.config:
        try:
            cfg = _load(args.config)
        except ConfigErrors as e:
            return e.print()
        jobs = probe_list(cfg)
    elif args.kind:
        pk = PROBES[args.kind]
        given = {"target": args.target, "timeout": args.timeout, "play_seconds": args.play_seconds,
                 "username": args.username, "password_file": args.password_file, "interface": args.interface,
                 "tls": True if args.tls else None, "tls_verify": False if args.insecure else None}
        if args.play_seconds and args.timeout is None:
            given["timeout"] = args.play_seconds + 10
        if args.kind == "icmp":  # --timeout is the wait for each reply; the round gets what it needs
            reply_timeout = 2.0 if args.timeout is None else args.timeout
            given.update(count=args.count, packet_interval=args.interval, reply_timeout=reply_timeout,
                         timeout=max(0.01, (args.count - 1) * args.interval + reply_timeout + 1.0))
        try:  # kinds whose target is only a label (interfaces, system, uplink, wifi) have a default
            pcfg = load_text(json.dumps({k: v for k, v in given.items() if v is not None}), pk.config,
                             "<command line>")
        except ConfigErrors as e:
            return e.print()
        jobs = [(args.kind, pcfg)]
    else:
        print("mogli-agent probe: give -c FILE --once, or KIND TARGET", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> list[Outcome]:
        return list(await asyncio.gather(*(run_probe(k, p) for k, p in jobs)))

    outcomes = asyncio.run(main())
    if args.json and args.kind == "icmp" and not args.config:
        o = outcomes[0]
        print(json.dumps({k: o.detail.get(k) for k in ICMP_JSON_FIELDS} | {"target": o.target}, indent=2))
        if not o.ok:
            print(f"mogli-agent probe: icmp {o.target}: {o.reason}: {o.detail.get('error', '')}", file=sys.stderr)
    elif args.json:
        print(json.dumps({"results": [
            {"kind": o.kind, "target": o.target, "success": o.ok, "reason": o.reason,
             "duration_s": round(o.duration, 6), **o.detail} for o in outcomes]}, indent=2))
    else:
        print(f"{'KIND':10} {'TARGET':32} {'RESULT':12} {'TIME':>10}  DETAIL")
        for o in outcomes:
            res = "ok" if o.ok else o.reason
            detail = " ".join(f"{k}={v}" for k, v in o.detail.items())
            print(f"{o.kind:10} {o.target:32} {res:12} {o.duration * 1000:8.2f}ms  {detail}")
    return 0 if all(o.ok for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "check-config":
        return cmd_check(args)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "analyze-pcap":
        from agent.rtp import offline

        return offline.main(args.file, args.json, args.clock_rate, args.stall_gap)
    return cmd_probe(args)


if __name__ == "__main__":
    sys.exit(main())
