"""`python -m mgmt_service`: flags -> MgmtConfig -> py3fs.app.run."""

from __future__ import annotations

import click

from mgmt_service.config import MgmtConfig
from mgmt_service.server import MgmtServer
from py3fs import app, config, errors


@click.command()
@click.option("--kv", "kv_url", help="KV store URL, e.g. sqlite:///path/kv.db")
@click.option("--node-id", type=int, default=1, show_default=True)
@click.option("--host", default=None, help="address to bind [127.0.0.1]")
@click.option("--port", type=int, default=None, help="port to bind [0: any free]")
@click.option("--http-port", type=int, default=None, help="status page [0: any]")
@click.option("--ready-file", default=None, help="write pid and address here")
@click.option("--config", "config_file", default=None, help="TOML config file")
@click.option("--heartbeat-timeout", default=None, help="e.g. 10s, 500ms")
@click.option("--lease-timeout", default=None, help="primary lease [heartbeat timeout]")
@click.option("--secret-file", default=None, help="cluster secret file")
@click.option("--log-level", default="INFO", show_default=True)
def main(
    kv_url: str | None,
    node_id: int,
    host: str | None,
    port: int | None,
    http_port: int | None,
    ready_file: str | None,
    config_file: str | None,
    heartbeat_timeout: str | None,
    lease_timeout: str | None,
    secret_file: str | None,
    log_level: str,
) -> None:
    overrides = {
        "kv_url": kv_url,
        "host": host,
        "port": port,
        "http_port": http_port,
        "heartbeat_timeout": heartbeat_timeout,
        "lease_timeout": lease_timeout,
        "node_id": node_id,
        "secret_file": secret_file,
    }
    try:
        cfg = config.load(MgmtConfig, "mgmt", config_file, overrides)
        if not cfg.kv_url:
            raise errors.InvalidArgument("no KV store: pass --kv URL")
    except errors.Py3fsError as exc:
        raise click.UsageError(str(exc)) from None
    app.run(
        "mgmtd",
        node_id,
        lambda: MgmtServer(cfg),
        ready_file,
        log_level,
        http_host=cfg.host,
        http_port=cfg.http_port,
    )


if __name__ == "__main__":
    main()
