"""`py3fs mount MOUNTPOINT`: serve the cluster's namespace through FUSE."""

from __future__ import annotations

import sys

import click

from py3fs_cli.options import cluster_option


@click.command()
@click.argument("mountpoint")
@cluster_option
@click.option(
    "--foreground/--daemon",
    default=True,
    help="Serve in this process (default), or fork once the mount is ready.",
)
@click.option("--debug", is_flag=True, help="Log every FUSE request.")
@click.option("--pid-file", default=None, help="With --daemon: write its pid here.")
@click.option(
    "--log-file",
    default=None,
    help="With --daemon: its log (JSON lines) [/tmp/py3fs-mount-UID-PATH.log].",
)
def mount(
    mountpoint: str,
    cluster_file: str | None,
    foreground: bool,
    debug: bool,
    pid_file: str | None,
    log_file: str | None,
) -> None:
    """Mount py3fs at MOUNTPOINT (fs type fuse.hf3fs). Unmount with SIGTERM,
    Ctrl-C or `fusermount3 -u MOUNTPOINT`."""
    # Imported here: pyfuse3 needs libfuse3, which other commands do not.
    from fuse_mount import mount as fuse

    sys.exit(
        fuse.run(
            mountpoint,
            cluster_file,
            daemon=not foreground,
            debug=debug,
            pid_file=pid_file,
            log_file=log_file,
        )
    )
