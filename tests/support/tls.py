"""A self-signed certificate for one host name, made with the openssl command, for https test servers."""

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate alone, checking the host name as usual."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(folder: Path, host: str) -> Certificate:
    """A certificate for `host` (its only subject alternative name), with its key, written into `folder`."""
    cert, key = folder / f"{host}.crt", folder / f"{host}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName=DNS:{host}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)
