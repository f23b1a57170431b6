"""Sequential write then read through the py3fs client, beside raw loopback TCP.

    python benchmarks/throughput.py [--size 1GiB] [--block 64MiB] [--fsync]

Starts a local 3-replica cluster in a temporary directory (or uses --cluster FILE),
writes SIZE bytes to one file and reads them back, and in the same run pushes the
same number of bytes through one loopback TCP connection with plain sockets: the
ceiling for a Python process moving bytes on this machine. Prints GB/s and ratios.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvloop

from client import Client, ClientConfig
from py3fs.cluster import ClusterSpec, LocalCluster
from py3fs.units import parse_size


def loopback_gbps(total: int, block: int) -> float:
    """Bytes through one loopback TCP connection (sendall / recv_into)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    payload = memoryview(os.urandom(block))

    def sender() -> None:
        conn, _ = server.accept()
        with conn:
            left = total
            while left:
                n = min(block, left)
                conn.sendall(payload[:n])
                left -= n

    thread = threading.Thread(target=sender)
    thread.start()
    buf = memoryview(bytearray(block))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        got = 0
        while got < total:
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
        elapsed = time.perf_counter() - start
    thread.join()
    server.close()
    return total / elapsed / 1e9


async def client_gbps(mgmt: list[str], total: int, block: int) -> tuple[float, float]:
    data = memoryview(os.urandom(block))
    async with Client(ClientConfig(mgmt=mgmt, max_inflight=64)) as fs:
        start = time.perf_counter()
        async with await fs.open("/bench/throughput.bin", "wb") as f:
            left = total
            while left:
                n = min(block, left)
                await f.write(data[:n])
                left -= n
        write = total / (time.perf_counter() - start) / 1e9

        buf = bytearray(block)
        start = time.perf_counter()
        got = 0
        async with await fs.open("/bench/throughput.bin", "rb") as f:
            while n := await f.readinto(buf):
                got += n
        read = total / (time.perf_counter() - start) / 1e9
        if got != total:
            raise SystemExit(f"read back {got} bytes of {total}")
        await fs.unlink("/bench/throughput.bin")
    return write, read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--block", default="64MiB")
    ap.add_argument("--fsync", action="store_true", help="storage fsyncs every write")
    ap.add_argument("--cluster", help="use this running cluster's cluster.toml")
    args = ap.parse_args()
    total, block = parse_size(args.size), parse_size(args.block)

    loop_gbps = loopback_gbps(total, block)
    with tempfile.TemporaryDirectory(prefix="py3fs-bench-") as tmp:
        cluster = None
        if args.cluster:
            from client.config import load_client_config

            mgmt = load_client_config(args.cluster).mgmt
        else:
            spec = ClusterSpec(data_dir=Path(tmp), fsync=args.fsync)
            cluster = LocalCluster(spec)
            cluster.up()
            os.environ["PY3FS_TOKEN_FILE"] = str(cluster.admin_token_file)
            mgmt = cluster.mgmt_addresses
        try:

            async def run() -> tuple[float, float]:
                async with Client(ClientConfig(mgmt=mgmt)) as fs:
                    await fs.mkdir("/bench", parents=True)
                return await client_gbps(mgmt, total, block)

            write, read = uvloop.run(run())
        finally:
            if cluster:
                cluster.down()

    print(
        f"size {args.size}, block {args.block}, 3 replicas, fsync {args.fsync}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'':<22}{'GB/s':>8}{'vs loopback':>14}")
    print(f"{'raw loopback TCP':<22}{loop_gbps:>8.2f}{1.0:>13.0%}")
    print(f"{'py3fs write':<22}{write:>8.2f}{write / loop_gbps:>13.0%}")
    print(f"{'py3fs read':<22}{read:>8.2f}{read / loop_gbps:>13.0%}")


if __name__ == "__main__":
    main()
