"""`python -m fuse_mount MOUNTPOINT [--cluster FILE] [--daemon] [--debug]`."""

from __future__ import annotations

import argparse
import sys

from fuse_mount import mount


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuse_mount")
    parser.add_argument("mountpoint")
    parser.add_argument("--cluster", default=None, help="cluster file")
    parser.add_argument("--daemon", action="store_true", help="fork once mounted")
    parser.add_argument("--debug", action="store_true", help="log every request")
    parser.add_argument("--pid-file", default=None)
    parser.add_argument("--log-file", default=None, help="daemon log (default: none)")
    args = parser.parse_args(argv)
    return mount.run(
        args.mountpoint,
        args.cluster,
        daemon=args.daemon,
        debug=args.debug,
        pid_file=args.pid_file,
        log_file=args.log_file,
    )


if __name__ == "__main__":
    sys.exit(main())
