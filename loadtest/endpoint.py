"""Where a Triton server is and how to talk to it: one parser for every ``--host``.

Why one parser: the load generator, its metrics snapshots and the quality evaluation all take a host;
each used to parse it its own way (one refused https/grpcs that another accepted). Accepted forms:
``http://H:P``, ``https://H:P``, ``grpc://H:P``, ``grpcs://H:P`` and a bare ``H:P`` (HTTP unless the
protocol says otherwise). Defaults: HTTP 8000, gRPC 8001, metrics 8002 (Triton's own defaults).
Never imports Locust, gevent or tritonclient.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from loadtest.errors import LoadtestError

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_TRITON_METRICS_PORT = 8002
PROTOCOLS = ("auto", "http", "grpc")
SCHEMES = ("http", "https", "grpc", "grpcs")


@dataclass(frozen=True)
class Endpoint:
    """Where Triton is and how to talk to it."""

    protocol: str  # http | grpc
    host: str
    port: int
    ssl: bool = False

    @property
    def address(self) -> str:
        """``host:port`` as tritonclient wants it (no scheme)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = self.protocol + ("s" if self.ssl else "")
        return f"{scheme}://{self.address}"

    @property
    def metrics_url(self) -> str:
        """Triton's Prometheus endpoint on the same host (port 8002, plain HTTP as Triton serves it)."""
        return f"http://{self.host}:{DEFAULT_TRITON_METRICS_PORT}/metrics"


def parse_endpoint(host: str | None, protocol: str = "auto", *, flag: str = "--host") -> Endpoint:
    """Protocol and address from a host and a protocol choice (an explicit protocol wins over the scheme).

    Messages show the host without its user-info: a password must never reach a log line.
    """
    from loadtest.credentials import redact_url

    if not host:
        raise LoadtestError(f"no Triton host: pass {flag} http://HOST:8000 or {flag} grpc://HOST:8001")
    shown = redact_url(host)
    protocol = (protocol or "auto").lower()
    if protocol not in PROTOCOLS:
        raise LoadtestError(f"--protocol must be auto, http or grpc, got '{protocol}'")
    parts = urlsplit(host if "://" in host else f"//{host}")
    scheme = (parts.scheme or "").lower()
    if scheme not in ("", *SCHEMES):
        raise LoadtestError(f"{flag} {shown}: scheme must be http, https, grpc or grpcs")
    if protocol == "auto":
        protocol = "grpc" if scheme.startswith("grpc") else "http"
    try:
        hostname, port = parts.hostname, parts.port
    except ValueError:
        raise LoadtestError(f"{flag} {shown} has an invalid port: use a number 1-65535") from None
    if not hostname:
        raise LoadtestError(f"{flag} {shown} has no host name (e.g. http://127.0.0.1:8000)")
    if port == 0:
        raise LoadtestError(f"{flag} {shown}: port 0 cannot be connected to: use a number 1-65535")
    default_port = DEFAULT_GRPC_PORT if protocol == "grpc" else DEFAULT_HTTP_PORT
    return Endpoint(protocol, hostname, port or default_port, ssl=scheme in ("https", "grpcs"))
