"""`python -m meta_service`: flags -> MetaConfig -> py3fs.app.run."""

from __future__ import annotations

import click

from meta_service.config import MetaConfig
from meta_service.server import MetaServer
from py3fs import app, config, errors


@click.command()
@click.option("--kv", help="KV store URL, e.g. sqlite:///path/kv.db")
@click.option("--mgmt", help="mgmtd address(es), comma-separated")
@click.option("--node-id", type=int, default=None)
@click.option("--host", default=None, help="address to bind [127.0.0.1]")
@click.option("--port", type=int, default=None, help="port to bind [0: any free]")
@click.option("--http-port", type=int, default=None, help="metrics [0: any]")
@click.option("--chunk-size", default=None, help="chunk size of new files [4MiB]")
@click.option("--gc-interval", default=None, help="GC pass interval [1s]")
@click.option("--heartbeat-interval", default=None, help="mgmtd heartbeat [0.5s]")
@click.option("--secret-file", default=None, help="cluster secret file")
@click.option("--trash-interval", default=None, help="expired trash scan [60s]")
@click.option("--rpc-max-connections", type=int, default=None, help="[4096]")
@click.option("--rpc-idle-timeout", default=None, help="close idle peers [600s]")
@click.option("--ready-file", default=None, help="write pid and address here")
@click.option("--config", "config_file", default=None, help="TOML config file")
@click.option("--log-level", default="INFO", show_default=True)
def main(
    kv: str | None,
    mgmt: str | None,
    node_id: int | None,
    host: str | None,
    port: int | None,
    http_port: int | None,
    chunk_size: str | None,
    gc_interval: str | None,
    heartbeat_interval: str | None,
    secret_file: str | None,
    trash_interval: str | None,
    rpc_max_connections: int | None,
    rpc_idle_timeout: str | None,
    ready_file: str | None,
    config_file: str | None,
    log_level: str,
) -> None:
    overrides = {
        "kv": kv,
        "mgmt": mgmt,
        "node_id": node_id,
        "host": host,
        "port": port,
        "http_port": http_port,
        "chunk_size": chunk_size,
        "gc_interval": gc_interval,
        "heartbeat_interval": heartbeat_interval,
        "secret_file": secret_file,
        "trash_interval": trash_interval,
        "rpc_max_connections": rpc_max_connections,
        "rpc_idle_timeout": rpc_idle_timeout,
    }
    try:
        cfg = config.load(MetaConfig, "meta", config_file, overrides)
        missing = [f for f in ("kv", "mgmt", "node_id") if not getattr(cfg, f)]
        if missing:
            flags = ", ".join("--" + f.replace("_", "-") for f in missing)
            raise errors.InvalidArgument(f"missing {flags}")
    except errors.Py3fsError as exc:
        raise click.UsageError(str(exc)) from None
    app.run(
        "meta",
        cfg.node_id,
        lambda: MetaServer(cfg),
        ready_file,
        log_level,
        http_host=cfg.host,
        http_port=cfg.http_port,
    )


if __name__ == "__main__":
    main()
