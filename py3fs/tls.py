"""Optional TLS: mgmtd's gRPC, meta's msgrpc and the data plane.

One switch, a directory holding `ca.pem` (the certificate authority clients
trust, readable by all), `cert.pem` and `key.pem` (the services' certificate
and its key, 0600). Services read it from `$PY3FS_TLS_DIR`; clients from
`ClientConfig.tls_dir` (the cluster file's `tls_dir`), else that variable.
Without it everything is plain TCP, as before. `py3fs cluster up --tls` makes
a local CA and a certificate for 127.0.0.1 (`make_local`, with `openssl`).

Clients check the server's certificate against the CA; servers do not ask
clients for one: clients prove who they are with tokens, services with node
signatures (py3fs.caps). The data plane (storage's framed protocol, client
to storage and storage to storage) is TLS too (py3fs.tls_sock), with the same
files; there a client certificate is optional, but one the CA did not sign is
refused.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from py3fs import errors

TLS_ENV = "PY3FS_TLS_DIR"
CA, CERT, KEY = "ca.pem", "cert.pem", "key.pem"


@dataclass(frozen=True)
class Tls:
    directory: str
    ca: bytes
    # The services' certificate and key; None where this user cannot read the
    # key (a client needs only the CA).
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def load(cls, directory: str) -> Tls | None:
        """The TLS files in `directory`; None for "" (TLS off). InvalidArgument
        when the CA cannot be read."""
        if not directory:
            return None
        path = Path(directory)
        try:
            ca = (path / CA).read_bytes()
        except OSError as exc:
            raise errors.InvalidArgument(f"TLS directory {directory}: {exc}") from None
        try:
            cert, key = (path / CERT).read_bytes(), (path / KEY).read_bytes()
        except OSError:
            cert = key = None
        return cls(directory, ca, cert, key)

    def _files(self) -> tuple[str, str]:
        if self.cert is None or self.key is None:
            raise errors.InvalidArgument(
                f"TLS directory {self.directory}: no readable {CERT} and {KEY}"
            )
        return str(Path(self.directory) / CERT), str(Path(self.directory) / KEY)

    def server_context(self) -> ssl.SSLContext:
        cert, key = self._files()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        return ctx

    def data_server_context(self) -> ssl.SSLContext:
        """The data plane's server side (py3fs.dataplane)."""
        ctx = self.server_context()
        # Connections are pooled and long-lived: no session tickets to resume
        # with (they would also arrive as unasked bytes on an idle connection).
        ctx.num_tickets = 0
        ctx.load_verify_locations(cadata=self.ca.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca.decode())

    def grpc_server(self) -> grpc.ServerCredentials:
        self._files()
        assert self.key is not None
        assert self.cert is not None
        return grpc.ssl_server_credentials([(self.key, self.cert)])

    def grpc_channel(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca)


def from_env() -> Tls | None:
    """The TLS files `$PY3FS_TLS_DIR` names (None: TLS off)."""
    return Tls.load(os.environ.get(TLS_ENV, ""))


def make_local(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1",)) -> None:
    """A CA and a certificate it signs for `hosts` (IP addresses or names),
    valid for ten years, in `directory`, made with the `openssl` command; the
    key 0600, the CA's key thrown away. Nothing when they exist already."""
    if all((directory / f).exists() for f in (CA, CERT, KEY)):
        return
    directory.mkdir(parents=True, exist_ok=True)
    alt = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        work = Path(tmp)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        steps = [
            [
                "req",
                "-x509",
                *ec,
                "-keyout",
                work / "ca.key",
                "-out",
                work / CA,
                "-days",
                "3650",
                "-subj",
                "/CN=py3fs local CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            [
                "req",
                *ec,
                "-keyout",
                work / KEY,
                "-out",
                work / "req.csr",
                "-subj",
                "/CN=py3fs",
            ],
            [
                "x509",
                "-req",
                "-in",
                work / "req.csr",
                "-CA",
                work / CA,
                "-CAkey",
                work / "ca.key",
                "-CAcreateserial",
                "-out",
                work / CERT,
                "-days",
                "3650",
                "-extfile",
                work / "ext.cnf",
            ],
        ]
        (work / "ext.cnf").write_text(
            f"subjectAltName={alt}\nbasicConstraints=critical,CA:FALSE\n"
        )
        for step in steps:
            done = subprocess.run(
                ["openssl", *map(str, step)], capture_output=True, text=True
            )
            if done.returncode:
                raise errors.InvalidArgument(
                    f"openssl {step[0]} failed: {done.stderr.strip()}"
                )
        os.chmod(work / KEY, 0o600)
        for f in (KEY, CERT, CA):
            os.replace(work / f, directory / f)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
