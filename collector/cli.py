"""mogli-collector: run, check-config, add-agent."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from pathlib import Path

from agent import __version__
from agent.confload import ConfigErrors
from agent.wire import ID_RE

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mogli-collector", description=__doc__)
    p.add_argument("--version", action="version", version=f"mogli-collector {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="serve ingest and /metrics until stopped")
    r.add_argument("-c", "--config", required=True)
    c = sub.add_parser("check-config", help="validate a config file; print OK or every error")
    c.add_argument("-c", "--config", required=True)
    a = sub.add_parser("add-agent", help="make a new token for NODE; print it once with its config line")
    a.add_argument("node")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "add-agent":
        from collector.app import token_hash

        if not ID_RE.fullmatch(args.node):
            print(f"node id {args.node!r} must match {ID_RE.pattern}", file=sys.stderr)
            return EXIT_CONFIG
        token = secrets.token_urlsafe(32)
        print(f"token for {args.node} (shown once; put it in the agent's token_file, mode 0600):")
        print(token)
        print("collector config, under `agents:`:")
        print(f"  {args.node}: {{token_sha256: {token_hash(token)}}}")
        return 0

    from collector import config, inventory

    try:
        cfg = config.load(args.config)
        inv = None
        if cfg.inventory:
            inv = inventory.load(Path(args.config).parent / cfg.inventory)
    except ConfigErrors as e:
        return e.print()
    if args.cmd == "check-config":
        print("OK")
        return 0

    from aiohttp import web

    from collector.app import make_app

    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    app = make_app(cfg, inv=inv)
    logging.getLogger("mogli.collector").info(
        "collector %s listening on %s:%d, %d agents known", __version__, cfg.listen.host, cfg.listen.port,
        len(cfg.agents),
    )
    ssl_context = None
    if cfg.tls.cert_file:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
        if cfg.tls.client_ca_file:
            ssl_context.load_verify_locations(cfg.tls.client_ca_file)
            ssl_context.verify_mode = ssl.CERT_REQUIRED
    web.run_app(app, host=cfg.listen.host, port=cfg.listen.port, print=None, access_log=None,
                ssl_context=ssl_context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
