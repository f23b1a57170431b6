"""`python -m storage_service`: flags → StorageConfig → py3fs.app.run."""

from __future__ import annotations

from typing import Any

import click

from py3fs import app, config
from storage_service.config import StorageConfig


@click.command()
@click.option("--mgmt", help="mgmtd address(es), comma separated")
@click.option("--node-id", type=int)
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--targets", type=int, help="storage targets on this node (default 4)")
@click.option("--host")
@click.option("--port", type=int)
@click.option("--http-port", type=int, help="metrics (default any free port)")
@click.option(
    "--fsync/--no-fsync",
    default=None,
    help="fsync every chunk write before acking it (default: on client fsync/close)",
)
@click.option("--heartbeat-interval", help='e.g. "1s"')
@click.option("--secret-file", help="cluster secret: check capabilities")
@click.option("--max-connections", type=int, help="open connections (4096)")
@click.option("--idle-timeout", help='close a connection idle this long ("600s")')
@click.option("--payload-timeout", help='deliver a payload within ("60s")')
@click.option("--payload-budget-bytes", help='payload bytes held at once ("1GiB")')
@click.option("--ready-file", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--log-level", default="INFO")
def main(
    ready_file: str | None, config_path: str | None, log_level: str, **flags: Any
) -> None:
    try:
        cfg = config.load(StorageConfig, "storage", config_path, flags)
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not cfg.node_id or not cfg.data_dir or not cfg.mgmt:
        raise click.UsageError("--node-id, --data-dir and --mgmt are required")
    if not 1 <= cfg.targets <= 99:
        raise click.UsageError("--targets must be 1..99 (target ids are node*100+i)")

    from storage_service.server import StorageServer

    app.run(
        "storage",
        cfg.node_id,
        lambda: StorageServer(cfg),
        ready_file,
        log_level,
        http_host=cfg.host,
        http_port=cfg.http_port,
    )


if __name__ == "__main__":
    main()
