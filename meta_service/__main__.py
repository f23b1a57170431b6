"""`python -m meta_service`: flags → MetaConfig → py3fs.app.run."""

from __future__ import annotations

import argparse
import sys

from meta_service.config import MetaConfig
from meta_service.server import MetaServer
from py3fs import app
from py3fs.config import ConfigError, load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m meta_service", description=__doc__)
    p.add_argument("--kv", help="KV store URL, e.g. sqlite:///var/py3fs/meta.db")
    p.add_argument("--mgmt", help="mgmtd address(es), comma-separated")
    p.add_argument("--node-id", type=int)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--chunk-size", help="default chunk size of new files (4MiB)")
    p.add_argument("--gc-interval", help="GC pass interval (1s)")
    p.add_argument("--heartbeat-interval", help="mgmtd heartbeat interval (1s)")
    p.add_argument("--ready-file")
    p.add_argument("--config", help="TOML file; its [meta] section")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {
        "kv": args.kv,
        "mgmt": args.mgmt,
        "node_id": args.node_id,
        "host": args.host,
        "port": args.port,
        "chunk_size": args.chunk_size,
        "gc_interval": args.gc_interval,
        "heartbeat_interval": args.heartbeat_interval,
    }
    try:
        cfg = load(MetaConfig, "meta", args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    missing = [n for n in ("kv", "mgmt", "node_id") if not getattr(cfg, n)]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        print(f"error: missing {flags}", file=sys.stderr)
        sys.exit(2)
    app.run(
        "meta", cfg.node_id, lambda: MetaServer(cfg), args.ready_file, args.log_level
    )


if __name__ == "__main__":
    main()
