"""A network-partition lab for fault tests: every service in a network namespace
of its own, on an address of its own, joined by veth pairs to a bridge that
lives in one more namespace; nftables rules inside the namespaces cut chosen
links one way or both and heal them.

    with NetLab() as lab:
        a = lab.add("storage-21")        # namespace + address 10.231.N.1
        lab.cut("storage-21", "mgmtd-1")  # both ways
        lab.cut("storage-21", TEST, one_way=True)  # only 21 -> the test
        lab.heal()

The test process itself (the client and the controller) stays in the root
namespace and reaches the lab through one veth of its own (`TEST`, address .254
of the lab's subnet): that adds a route to the lab's /24 in the root namespace,
removed with the lab. Every packet the services send goes to an address inside
the lab; no rule is ever put in the root namespace (the peer's namespace drops
the test's traffic instead). Names are short and tagged with the pid so several
labs (and other users of the machine) do not collide; the lab deletes what it
made, also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

TEST = "test"  # the test process's own link into the lab


class NetLabUnavailable(RuntimeError):
    pass


def _run(*cmd: str, check: bool = True, input: str | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/bootstrap.sh installs it)"
    # Root is not enough in a container without CAP_NET_ADMIN: try one.
    probe = f"p3fprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        nft = subprocess.run(
            ["ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe"],
            capture_output=True,
            text=True,
        )
        if nft.returncode != 0:
            return f"nftables unusable in a namespace: {nft.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _free_subnet() -> int:
    """A third octet for 10.231.X.0/24 that no route in the root namespace uses
    (another lab, or the host's own networks)."""
    routes = _run("ip", "-4", "route", "show")
    addrs = _run("ip", "-4", "addr", "show")
    start = os.getpid() % 200
    for i in range(200):
        x = (start + i) % 200 + 20
        if f"10.231.{x}." not in routes + addrs:
            return x
    raise NetLabUnavailable("no free 10.231.X.0/24 subnet")


class NetLab:
    """Namespaces `<tag>-<n>` plus `<tag>-br` (the bridge). Not thread-safe."""

    def __init__(self) -> None:
        if reason := unavailable_reason():
            raise NetLabUnavailable(reason)
        self.tag = f"p3f{os.getpid() % 100000}"
        self.subnet = _free_subnet()
        self.bridge_ns = f"{self.tag}-br"
        self.nodes: dict[str, tuple[str, str]] = {}  # name -> (netns, address)
        self._root_veth = f"{self.tag}t"
        self._made: list[str] = []
        self._cuts: set[tuple[str, str]] = set()

    # ------------------------------------------------------------ topology

    def _ns(self, ns: str, *cmd: str, check: bool = True) -> str:
        return _run("ip", "netns", "exec", ns, *cmd, check=check)

    def open(self) -> NetLab:
        try:
            _run("ip", "netns", "add", self.bridge_ns)
            self._made.append(self.bridge_ns)
            self._ns(self.bridge_ns, "ip", "link", "set", "lo", "up")
            self._ns(self.bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
            self._ns(self.bridge_ns, "ip", "link", "set", "br0", "up")
            # The test's own link: one end in the root namespace.
            inner = f"{self.tag}u"
            _run("ip", "link", "add", self._root_veth, "type", "veth", "peer", inner)
            _run("ip", "link", "set", inner, "netns", self.bridge_ns)
            self._ns(self.bridge_ns, "ip", "link", "set", inner, "master", "br0")
            self._ns(self.bridge_ns, "ip", "link", "set", inner, "up")
            _run(
                "ip", "addr", "add", f"{self.address(TEST)}/24", "dev", self._root_veth
            )
            _run("ip", "link", "set", self._root_veth, "up")
        except BaseException:
            self.close()
            raise
        return self

    def address(self, name: str) -> str:
        if name == TEST:
            return f"10.231.{self.subnet}.254"
        return self.nodes[name][1]

    def netns(self, name: str) -> str:
        return self.nodes[name][0]

    def add(self, name: str) -> tuple[str, str]:
        """A namespace for service `name` with an address of its own, linked to
        the bridge; returns (namespace, address)."""
        n = len(self.nodes) + 1
        if n > 250:
            raise NetLabUnavailable("at most 250 nodes per lab")
        ns = f"{self.tag}-{n}"
        addr = f"10.231.{self.subnet}.{n}"
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        outer = f"{self.tag}b{n}"
        self._ns(ns, "ip", "link", "set", "lo", "up")
        self._ns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", outer)
        self._ns(ns, "ip", "link", "set", outer, "netns", self.bridge_ns)
        self._ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        self._ns(ns, "ip", "link", "set", "eth0", "up")
        self._ns(self.bridge_ns, "ip", "link", "set", outer, "master", "br0")
        self._ns(self.bridge_ns, "ip", "link", "set", outer, "up")
        # Filter table, empty until a cut: input and output hooks.
        self._nft(
            ns,
            "add table inet py3fs\n"
            "add chain inet py3fs in { type filter hook input priority 0; }\n"
            "add chain inet py3fs out { type filter hook output priority 0; }\n",
        )
        self.nodes[name] = (ns, addr)
        return ns, addr

    def _nft(self, ns: str, script: str) -> None:
        _run("ip", "netns", "exec", ns, "nft", "-f", "-", input=script)

    def close(self) -> None:
        """Delete every namespace (their veths go with them) and the root veth."""
        _run("ip", "link", "del", self._root_veth, check=False)
        for ns in reversed(self._made):
            _run("ip", "netns", "del", ns, check=False)
        self._made.clear()

    def __enter__(self) -> NetLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ partitions

    def _drop(self, src: str, dst: str) -> None:
        """Drop packets from `src` to `dst`: on `dst`'s input when `dst` is a
        lab node, else on `src`'s output (the test's link has no rules)."""
        if dst != TEST:
            ns, chain, match = self.netns(dst), "in", f"ip saddr {self.address(src)}"
        else:
            ns, chain, match = self.netns(src), "out", f"ip daddr {self.address(dst)}"
        self._nft(ns, f"add rule inet py3fs {chain} {match} drop\n")

    def cut(self, a: str, b: str, *, one_way: bool = False) -> None:
        """Cut the link between `a` and `b` (node names or TEST): both ways, or
        with `one_way` only packets from `a` to `b`."""
        for src, dst in [(a, b)] if one_way else [(a, b), (b, a)]:
            if (src, dst) not in self._cuts:
                self._drop(src, dst)
                self._cuts.add((src, dst))

    def isolate(self, name: str, *, keep: tuple[str, ...] = ()) -> None:
        """Cut `name` from every other node and the test, except `keep`."""
        for other in [*self.nodes, TEST]:
            if other != name and other not in keep:
                self.cut(name, other)

    def heal(self) -> None:
        """Remove every cut."""
        for ns, _ in self.nodes.values():
            self._nft(ns, "flush chain inet py3fs in\nflush chain inet py3fs out\n")
        self._cuts.clear()

    def cuts(self) -> set[tuple[str, str]]:
        return set(self._cuts)


@contextmanager
def netlab(names: list[str]) -> Iterator[NetLab]:
    """A lab with one namespace per name."""
    with NetLab() as lab:
        for name in names:
            lab.add(name)
        yield lab
