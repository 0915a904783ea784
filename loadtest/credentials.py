"""Credentials for the server: where they come from, how they are sent, and that they are never written.

Why a module of its own: a password in ``--host http://user:SECRET@host`` once reached manifest.json,
locust.html, quality/summary.json and report.html. Here every host URL is split into a *redacted* URL
(what any output may show) and a ``Credentials`` object that lives only in memory:

- URL user-info (``http://user:password@host``) becomes an HTTP ``Authorization: Basic`` header (gRPC:
  ``authorization`` metadata); the URL keeps ``host:port`` only.
- More headers / gRPC metadata come from the environment (``LOADTEST_HTTP_HEADERS``, one ``Name: value`` per
  line) or a file (``LOADTEST_HEADERS_FILE`` / ``--headers-file``, same format): never from the command line,
  where ``ps`` and shell history would show them.
- TLS: ``https://`` / ``grpcs://`` hosts; the CA bundle, client certificate and key are *files*
  (``LOADTEST_SSL_CA_FILE``, ``LOADTEST_SSL_CERT_FILE``, ``LOADTEST_SSL_KEY_FILE``): only their paths are ever
  recorded, never their content.

``loadtest run`` hands the user-info to its Locust child through the environment (``LOADTEST_URL_CREDENTIALS``),
never on its command line. Never imports Locust or gevent.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from loadtest.errors import LoadtestError

URL_CREDENTIALS_ENV = "LOADTEST_URL_CREDENTIALS"  # "user:password", set by `loadtest run` for its child
HEADERS_ENV = "LOADTEST_HTTP_HEADERS"
HEADERS_FILE_ENV = "LOADTEST_HEADERS_FILE"
SSL_CA_ENV = "LOADTEST_SSL_CA_FILE"
SSL_CERT_ENV = "LOADTEST_SSL_CERT_FILE"
SSL_KEY_ENV = "LOADTEST_SSL_KEY_FILE"
REDACTED = "REDACTED"


@dataclass(frozen=True)
class Credentials:
    """What authenticates the client; ``repr`` never shows a secret."""

    user_info: str | None = field(default=None, repr=False)  # "user:password" from the URL (or the child's env)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def request_headers(self, protocol: str) -> dict[str, str] | None:
        """HTTP headers (gRPC: metadata, names lower-cased as gRPC requires) for every request; None if none."""
        out: dict[str, str] = {}
        if self.user_info:
            out["Authorization"] = "Basic " + base64.b64encode(self.user_info.encode()).decode()
        out.update(self.headers)
        if not out:
            return None
        return {k.lower(): v for k, v in out.items()} if protocol == "grpc" else out

    def secrets(self) -> list[str]:
        """Every secret string (for tests and for scrubbing text that may echo one)."""
        found = []
        if self.user_info:
            found.append(self.user_info)
            password = self.user_info.partition(":")[2]
            if password:
                found.append(password)
            found.append(base64.b64encode(self.user_info.encode()).decode())
        found += [v for _, v in self.headers if v]
        return found

    def describe(self) -> dict:
        """What the manifest may say: which kinds of credential were used, never their values."""
        return {
            "basic_auth": bool(self.user_info),
            "headers": sorted({k for k, _ in self.headers}),
            "tls_ca_file": self.ca_file,
            "tls_client_cert": bool(self.cert_file),
        }


def redact_url(url: str | None) -> str | None:
    """``scheme://user:pw@host:port/path`` -> ``scheme://host:port/path`` (anything else unchanged)."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url if "://" in url else f"//{url}")
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean if "://" in url else clean.removeprefix("//")


def split_host(url: str | None) -> tuple[str | None, str | None]:
    """(the URL without user-info, ``"user:password"`` or None)."""
    if not url or "@" not in url:
        return url, None
    parts = urlsplit(url if "://" in url else f"//{url}")
    try:
        user, password = parts.username, parts.password
    except ValueError:
        return redact_url(url), None
    if user is None and password is None:
        return url, None
    return redact_url(url), f"{unquote(user or '')}:{unquote(password or '')}"


def _parse_headers(text: str, where: str) -> list[tuple[str, str]]:
    headers = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise LoadtestError(f"{where} line {n}: expected 'Name: value' (the value is not shown here)")
        headers.append((name.strip(), value.strip()))
    return headers


def _existing_file(path: str | None, what: str, env: str) -> str | None:
    if not path:
        return None
    if not Path(path).is_file():
        raise LoadtestError(f"{what} {path} does not exist: fix {env} (or its option)")
    return str(Path(path).resolve())


def load_credentials(
    user_info: str | None = None,
    *,
    headers_file: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    environ: dict | None = None,
) -> Credentials:
    """Credentials from the URL's user-info, the environment and files (options win over the environment)."""
    env = os.environ if environ is None else environ
    user_info = user_info or env.get(URL_CREDENTIALS_ENV) or None
    headers = _parse_headers(env.get(HEADERS_ENV, ""), HEADERS_ENV)
    headers_file = headers_file or env.get(HEADERS_FILE_ENV) or None
    if headers_file:
        path = Path(headers_file)
        if not path.is_file():
            raise LoadtestError(f"headers file {path} does not exist: fix --headers-file / {HEADERS_FILE_ENV}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise LoadtestError(f"headers file {path} is not UTF-8 text: one 'Name: value' per line") from None
        headers += _parse_headers(text, f"headers file {path}")
    cert = _existing_file(cert_file or env.get(SSL_CERT_ENV), "TLS client certificate", SSL_CERT_ENV)
    key = _existing_file(key_file or env.get(SSL_KEY_ENV), "TLS client key", SSL_KEY_ENV)
    if bool(cert) != bool(key):
        raise LoadtestError(f"a TLS client certificate needs its key and the key its certificate: set both "
                            f"{SSL_CERT_ENV} and {SSL_KEY_ENV}")  # fmt: skip
    return Credentials(
        user_info=user_info,
        headers=tuple(headers),
        ca_file=_existing_file(ca_file or env.get(SSL_CA_ENV), "TLS CA file", SSL_CA_ENV),
        cert_file=cert,
        key_file=key,
    )


def http_client_tls(credentials: Credentials) -> dict:
    """Keyword arguments for ``tritonclient.http.InferenceServerClient`` on an https:// host."""
    options: dict = {}
    if credentials.ca_file:
        options["ca_certs"] = credentials.ca_file
    if credentials.cert_file:
        options.update(certfile=credentials.cert_file, keyfile=credentials.key_file)
    return {"ssl": True, "ssl_options": options or None}


def grpc_client_tls(credentials: Credentials) -> dict:
    """Keyword arguments for ``tritonclient.grpc.InferenceServerClient`` on a grpcs:// host (it reads the files)."""
    return {
        "ssl": True,
        "root_certificates": credentials.ca_file,
        "private_key": credentials.key_file,
        "certificate_chain": credentials.cert_file,
    }


def scrub(text: str, credentials: Credentials | None) -> str:
    """``text`` with every URL user-info and every known secret replaced (for error lines that echo input)."""
    import re

    text = re.sub(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@", r"\1", text)
    for secret in credentials.secrets() if credentials else []:
        text = text.replace(secret, REDACTED)
    return text
