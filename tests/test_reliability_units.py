"""Units of the reliability/security pieces: bounds, credentials, backoff, log progress, reconciliation."""

from __future__ import annotations

import io
import json
import math

import pytest

from loadtest import bounds
from loadtest.credentials import Credentials, load_credentials, redact_url, scrub, split_host
from loadtest.errors import LoadtestError
from loadtest.load.backoff import Backoff, is_connection_error


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e9, -1])
def test_rates_are_bounded(value):
    with pytest.raises(LoadtestError, match="--arrival-rate must be finite"):
        bounds.check_arrival_rate("--arrival-rate", value)


def test_bounds_accept_the_range():
    bounds.check_arrival_rate("--arrival-rate", 0)
    bounds.check_arrival_rate("--arrival-rate", bounds.MAX_ARRIVAL_RATE)
    bounds.check_port("--port", 0)
    assert bounds.check_bind_address("--address", "localhost") == "127.0.0.1"
    with pytest.raises(LoadtestError, match="not an IP address"):
        bounds.check_bind_address("--address", "300.1.1.1")


def test_user_info_is_split_and_redacted():
    clean, info = split_host("https://ana:p%40ss@triton.example:8443/x")
    assert clean == "https://triton.example:8443/x" and info == "ana:p@ss"
    assert split_host("grpc://h:8001") == ("grpc://h:8001", None)
    assert redact_url("u:pw@h:1") == "h:1"
    assert scrub('{"host": "http://u:pw@h:1"}', None) == '{"host": "http://h:1"}'


def test_credentials_headers_and_secrets(tmp_path):
    headers = tmp_path / "headers"
    headers.write_text("# comment\nX-Api-Key: abc123\n")
    creds = load_credentials("ana:pw", headers_file=str(headers), environ={})
    http = creds.request_headers("http")
    assert http["Authorization"].startswith("Basic ") and http["X-Api-Key"] == "abc123"
    assert creds.request_headers("grpc")["x-api-key"] == "abc123"
    assert "pw" in creds.secrets() and "abc123" in creds.secrets()
    assert "abc123" not in repr(creds) and "pw" not in json.dumps(creds.describe())
    assert Credentials().request_headers("http") is None
    with pytest.raises(LoadtestError, match="needs its key"):
        load_credentials(None, cert_file=str(headers), environ={})
    (tmp_path / "bad").write_text("no colon here\n")
    with pytest.raises(LoadtestError, match="Name: value") as err:
        load_credentials(None, headers_file=str(tmp_path / "bad"), environ={})
    assert "no colon" not in str(err.value)  # the value is never echoed


def test_backoff_grows_to_the_cap_and_resets():
    backoff = Backoff(base_s=0.05, cap_s=2.0)
    delays = [backoff.delay() for _ in range(10)]
    assert delays[0] <= 0.05 and max(delays) <= 2.0 and delays[-1] >= 1.0
    backoff.reset()
    assert backoff.delay() <= 0.05
    assert is_connection_error("StatusCode.UNAVAILABLE: failed to connect to all addresses")
    assert is_connection_error("ConnectionRefusedError: [Errno 111] Connection refused")
    assert not is_connection_error("[StatusCode.INVALID_ARGUMENT] unexpected shape")
    assert not is_connection_error(None)


def test_line_progress_prints_stages_when_not_a_terminal():
    from rich.console import Console

    from loadtest.console import LineProgress, make_progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    progress = make_progress(console=console)
    assert isinstance(progress, LineProgress)
    with progress:
        task = progress.add_task("demo pair", total=1.0, note="")
        for i, note in enumerate(["tokenizer", "teacher", "teacher", "student"], 1):
            progress.update(task, completed=i / 4, note=note)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [  # every 25 % step prints, whatever the note
        "demo pair:   0%", "demo pair:  25% tokenizer", "demo pair:  50% teacher", "demo pair:  75% teacher",
        "demo pair: 100% student",
    ]


def test_reconciliation_names_each_gap(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loadtest.analysis.reconcile import reconcile

    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    (run / "metrics").mkdir()
    table = pa.table({"model": ["a"] * 10, "success": [True] * 8 + [False] * 2})
    pq.write_table(table, run / "records" / "w-1.parquet")
    (run / "metrics" / "1-start.prom").write_text('nv_inference_request_success{model="a",version="1"} 100\n')
    (run / "metrics" / "2-stop.prom").write_text('nv_inference_request_success{model="a",version="1"} 108\n'
                                                 'nv_inference_request_failure{model="a",reason="x",version="1"} 0\n')
    (run / "manifest.json").write_text(json.dumps({"locust": {"requests": 10, "failures": 2}}))
    line = reconcile(run).line()
    assert "records 10 (2 failed) vs Locust 10 (2 failed) vs Triton 8 (8 ok + 0 failed)" in line
    assert "2 recorded request(s) never reached Triton" in line
    (run / "metrics" / "2-stop.prom").write_text('nv_inference_request_success{model="a",version="1"} 108\n'
                                                 'nv_inference_request_failure{model="a",reason="x",version="1"} 2\n')
    assert reconcile(run).line().endswith("all agree")
