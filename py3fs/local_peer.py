"""Whether the process behind a data server's Unix socket is that server.

The abstract Unix name beside a data server (py3fs.dataplane.local_name) is
derived from its TCP address, and any local user may bind a free abstract name:
one for a storage node on another host, or for one that is not running yet.
A client that took such a socket for the node would read whatever data file
and checksums the squatter passed. So before trusting the socket a client
compares the peer's user (SO_PEERCRED, set by the kernel at connect) with the
owner of the TCP socket listening on the node's address in this network
namespace (/proc/net/tcp, readable by every user). A squatter of another user
fails; one with no listening TCP socket of that address fails. (A process of
the node's own user could as well have bound the TCP port.)
"""

from __future__ import annotations

import ipaddress
import socket
import struct

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_UCRED = struct.Struct("3i")  # pid, uid, gid


def _decode(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host order."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return ipaddress.IPv4Address(words)
    return ipaddress.IPv6Address(words)


def _covers(
    listener: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    if listener.is_unspecified:
        return True
    if isinstance(listener, ipaddress.IPv6Address) and listener.ipv4_mapped:
        listener = listener.ipv4_mapped
    return listener == ip


def listener_uids(
    host: str, port: int, tables: dict[str, str] | None = None
) -> set[int]:
    """Users owning a TCP socket that listens on `host:port` here (an IP
    literal; a name gives none). `tables` replaces /proc/net/tcp{,6} (tests)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return set()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if tables is None:
        tables = {}
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(path) as f:
                    tables[path] = f.read()
            except OSError:
                continue
    uids: set[int] = set()
    for text in tables.values():
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _LISTEN:
                continue
            addr, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            try:
                if _covers(_decode(addr), ip):
                    uids.add(int(fields[7]))
            except ValueError:
                continue
    return uids


def peer_uid(sock: socket.socket) -> int:
    """The user of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)[1]


def is_server(sock: socket.socket, host: str, port: int) -> bool:
    """Whether the peer of `sock` runs as the user listening on host:port."""
    return peer_uid(sock) in listener_uids(host, port)
