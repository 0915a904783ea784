"""Pre-flight: before the clock starts, the server is reachable, speaks the protocol, and every model is READY.

Why: a health probe is not enough. A Triton answers ``/v2/health/ready`` before its models load (measured:
load started after that probe got "model not ready" on 561 of 8,302 requests), a gRPC port answers HTTP
with garbage, and a typo in a model name costs a whole run of failures. ``check_server`` asks, in order:
can a TCP connection be opened; does the port speak the chosen protocol (if not, does it speak the other
one); is the server live; which models (``--models``, or every READY model of the repository index); is
each one READY at the expected version. ``wait_ready_s`` > 0 polls until all are (``--wait-ready``).
Every failure is one line naming the server or model, what is wrong and the fix.

Used by ``loadtest run``/``sweep``/``eval`` (through the Locust listener or directly) before any load.
Never imports Locust; under Locust the sleeps and sockets are gevent's, so the event loop keeps turning.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from loadtest.errors import LoadtestError
from loadtest.load.server_models import IndexEntry, ServerModel, ServerModelReader, error_text

log = logging.getLogger("loadtest")
POLL_S = 0.5
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Preflight:
    """What was checked and found: the models to load, as the server describes them."""

    url: str
    models: tuple[ServerModel, ...]
    waited_s: float = 0.0

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


def _other(endpoint):
    from dataclasses import replace

    return replace(endpoint, protocol="http" if endpoint.protocol == "grpc" else "grpc")


def _scheme(endpoint) -> str:
    if endpoint.protocol == "grpc":
        return "grpcs" if endpoint.ssl else "grpc"
    return "https" if endpoint.ssl else "http"


def check_reachable(endpoint, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connection to host:port opens, or one line saying why not."""
    url = f"{_scheme(endpoint)}://{endpoint.address}"
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s):
            return
    except socket.gaierror:
        raise LoadtestError(f"cannot reach Triton at {url}: unknown host '{endpoint.host}'; check --host") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LoadtestError(
            f"cannot reach Triton at {url} ({reason.lower()}): is the server running and the port right? "
            "check --host (or wait for it with --wait-ready SECONDS)"
        ) from None


def _speaks(endpoint, timeout_s: float, credentials=None) -> bool:
    try:
        with ServerModelReader(endpoint, timeout_s=timeout_s, credentials=credentials) as reader:
            metadata = reader.server_metadata()  # a Triton answers {"name", "version", "extensions"}
        return isinstance(metadata, dict) and "version" in metadata
    except Exception:  # any failure means "not this protocol"
        return False


def check_protocol(endpoint, timeout_s: float, credentials=None) -> None:
    """The port answers the chosen protocol; if it answers the other one instead, say which flag to use."""
    if _speaks(endpoint, timeout_s, credentials):
        return
    url = f"{_scheme(endpoint)}://{endpoint.address}"
    other = _other(endpoint)
    if _speaks(other, timeout_s, credentials):
        fix = f"--host {_scheme(other)}://{endpoint.address}"
        usual = "8000" if endpoint.protocol == "http" else "8001"
        raise LoadtestError(
            f"{url} answers {other.protocol.upper()}, not {endpoint.protocol.upper()}: use {fix} "
            f"(or the server's {endpoint.protocol.upper()} port, usually {usual})"
        )
    raise LoadtestError(
        f"{url} accepts connections but does not answer as a Triton {endpoint.protocol.upper()} endpoint: "
        "check the host and port (Triton: 8000 HTTP, 8001 gRPC)"
    )


def _index(reader: ServerModelReader) -> list[IndexEntry] | None:
    try:
        return reader.repository_index()
    except Exception:  # the repository API may be closed (restricted): callers then need --models
        return None


def _not_ready_line(name: str, version: str, url: str, index: list[IndexEntry] | None, waited: float) -> str:
    rows = [r for r in (index or []) if r.name == name]
    at = f" version {version}" if version else ""
    if index is not None and not rows:
        known = ", ".join(sorted({r.name for r in index})) or "none"
        return f"model '{name}' is not on Triton at {url} (its models: {known}); fix --models"
    state = ""
    if rows:
        row = next((r for r in rows if not version or r.version == version), rows[0])
        state = f" (state {row.state or 'unknown'}{': ' + row.reason if row.reason else ''})"
        if version and all(r.version != version for r in rows if r.version):
            versions = ", ".join(sorted({r.version for r in rows if r.version}))
            return f"model '{name}' has no version {version} on Triton at {url} (versions: {versions}); fix --model-version"
    waited_text = f" after waiting {waited:.0f} s" if waited else ""
    return (
        f"model '{name}'{at} is not READY on Triton at {url}{state}{waited_text}: wait for it to load "
        "(--wait-ready SECONDS) or check the server's log"
    )


def check_server(
    endpoint,
    models: list[str] | None = None,
    *,
    version: str = "",
    wait_ready_s: float = 0.0,
    timeout_s: float = 10.0,
    on_wait: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    credentials=None,
) -> Preflight:
    """Reach, protocol, liveness, model list and readiness; returns the models as the server describes them."""
    url = f"{_scheme(endpoint)}://{endpoint.address}"
    deadline = time.monotonic() + max(wait_ready_s, 0.0)
    started = time.monotonic()
    said: set[str] = set()

    def waiting(message: str) -> bool:
        """True (after a pause) while time is left; tells the user once per distinct reason."""
        if time.monotonic() >= deadline:
            return False
        if message not in said:
            said.add(message)
            (on_wait or log.info)(f"loadtest: waiting for Triton: {message}")
        sleep(POLL_S)
        return True

    while True:  # reachable and speaking the protocol
        try:
            check_reachable(endpoint, min(timeout_s, CONNECT_TIMEOUT_S))
            check_protocol(endpoint, timeout_s, credentials)
            break
        except LoadtestError as exc:
            if not waiting(str(exc)):
                raise
    reader = ServerModelReader(endpoint, timeout_s=timeout_s, credentials=credentials)
    try:
        while True:
            try:
                live = reader.is_live()
            except Exception as exc:
                live, detail = False, error_text(exc)
            else:
                detail = "not live"
            if live:
                break
            if not waiting(f"{url} is {detail}"):
                raise LoadtestError(f"Triton at {url} is not live ({detail}); check the server's log")
        names = [m for m in (models or []) if m]
        while not names:
            index = _index(reader)
            if index is None:
                raise LoadtestError(
                    f"Triton at {url} does not list its models (repository index closed): name them with --models"
                )
            names = sorted({r.name for r in index if r.state.upper() == "READY"})
            if names:
                break
            if not waiting(f"no model of {url} is READY yet"):
                listing = ", ".join(f"{r.name} {r.state or '?'}" for r in index) or "none"
                raise LoadtestError(f"no model is READY on Triton at {url} (models: {listing}); pass --models or wait with --wait-ready")
        for name in names:
            while True:
                try:
                    ready = reader.is_model_ready(name, version)
                except Exception:
                    ready = False
                if ready:
                    break
                index = _index(reader)
                line = _not_ready_line(name, version, url, index, time.monotonic() - started)
                unknown = index is not None and not any(r.name == name for r in index)
                if unknown or not waiting(f"model '{name}' not READY yet"):
                    raise LoadtestError(line)
        described = []
        for name in names:
            try:
                model = reader.model(name, version)
            except Exception as exc:
                raise LoadtestError(f"cannot read model '{name}' from Triton at {url}: {error_text(exc)}") from None
            if version and model.versions and version not in model.versions:
                raise LoadtestError(
                    f"model '{name}' has no version {version} on Triton at {url} (versions: "
                    f"{', '.join(model.versions)}); fix --model-version"
                )
            described.append(model)
    finally:
        reader.close()
    return Preflight(url, tuple(described), time.monotonic() - started)
