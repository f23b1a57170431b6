"""The `py3fs` command: cluster control and file commands.

Every command reports a failure as one line on stderr and exits with status 1.
"""

from __future__ import annotations

import sys

import click

from py3fs import errors
from py3fs_cli import (
    admin_cmds,
    bench_cmd,
    cluster_cmds,
    file_cmds,
    mount_cmd,
    user_cmds,
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except errors.Py3fsError as exc:
            click.echo(f"py3fs: {exc} [{type(exc).__name__}]", err=True)
            sys.exit(1)
        except OSError as exc:
            message = exc.strerror or str(exc)
            if exc.filename:
                message = f"{exc.filename}: {message}"
            click.echo(f"py3fs: {message}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="py3fs")
def main() -> None:
    """py3fs: the Fire-Flyer File System, in Python."""


main.add_command(cluster_cmds.cluster)
for command in file_cmds.COMMANDS:
    main.add_command(command)
main.add_command(mount_cmd.mount)
main.add_command(bench_cmd.bench)
for command in admin_cmds.COMMANDS:
    main.add_command(command)
admin_cmds.admin.add_command(user_cmds.user)
