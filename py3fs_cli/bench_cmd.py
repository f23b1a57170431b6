"""`py3fs bench JOBFILE`: fio-style jobs through USRBIO against a cluster."""

from __future__ import annotations

import json

import click

from client.usrbio.bench import parse_jobs, run_jobs
from client.usrbio.bench_report import to_json, to_text
from client.usrbio.local import Usrbio
from py3fs_cli.options import cluster_option


@click.command("bench")
@click.argument("jobfile", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--output-format",
    type=click.Choice(["normal", "json"]),
    default="normal",
    show_default=True,
)
@cluster_option
def bench(jobfile: str, output_format: str, cluster_file: str | None) -> None:
    """Run the jobs of a fio job file (paths are py3fs paths) through USRBIO
    and print fio-like results; exits 1 if an io or a verify failed."""
    with open(jobfile) as f:
        jobs = parse_jobs(f.read())
    with Usrbio.from_cluster(cluster_file) as u:
        results = run_jobs(u, jobs)
    if output_format == "json":
        click.echo(json.dumps(to_json(results), indent=2))
    else:
        click.echo(to_text(results), nl=False)
    if any(r.error for r in results):
        raise SystemExit(1)
