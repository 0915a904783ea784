"""A TLS-terminating TCP proxy on loopback, for the HTTPS / gRPC-TLS tests against the embedded Triton.

Real TLS (a self-signed certificate made with ``openssl``), real bytes forwarded to Triton's plain port.
For HTTP the proxy keeps the first decrypted bytes of each connection, so a test can see the headers
the client sent (gRPC's HPACK-compressed headers cannot be read that way; gRPC proves TLS only).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, valid one day."""
    if shutil.which("openssl") is None:
        import pytest

        pytest.skip("needs the openssl command to make a self-signed certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class TLSProxy:
    """Accept TLS on a free loopback port and pipe the plaintext to ``127.0.0.1:target_port``."""

    def __init__(self, cert: Path | None, key: Path | None, target_port: int, alpn: list[str] | None = None):
        """``cert=None``: a plain TCP proxy (for cutting connections mid-run)."""
        self.target_port = target_port
        self.context = None
        if cert is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert, key)
            if alpn:
                self.context.set_alpn_protocols(alpn)
        self.sockets: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.first_bytes: list[bytes] = []
        self.handshakes = 0
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True) if self.context else raw
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes += 1
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self.sockets += [client, upstream]
        first = {"done": False}

        def pipe(src, dst, keep: bool) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if keep and not first["done"]:
                        self.first_bytes.append(data[:4096])
                        first["done"] = True
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(upstream, client, False), daemon=True).start()
        pipe(client, upstream, True)

    def close(self) -> None:
        """Stop listening and cut every open connection: new connections are refused from now on."""
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
