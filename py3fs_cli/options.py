"""Options shared by the py3fs commands."""

from __future__ import annotations

import click

cluster_option = click.option(
    "--cluster",
    "cluster_file",
    envvar="PY3FS_CLUSTER",
    default=None,
    help="Cluster file (default: $PY3FS_CLUSTER or ./.py3fs/cluster.toml).",
)
