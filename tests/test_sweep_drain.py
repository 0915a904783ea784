"""A sweep step starts only once the previous step's backlog has left the server (real embedded Triton)."""

from __future__ import annotations

import tritonclient.http as httpclient

from loadtest.sweep.drain import wait_until_drained
from test_serving import _inputs, _metric


def test_a_backlog_is_waited_out_and_an_idle_server_is_drained_at_once(triton_server):
    url = triton_server.metrics_url
    idle = wait_until_drained(url, "teacher")
    assert idle.drained and idle.how == "pending gauge" and idle.seconds < 5

    before = _metric(url, "nv_inference_request_success", "teacher")
    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"), concurrency=64)
    try:
        inputs = _inputs(httpclient, triton_server.repository, "teacher", 1, 128)
        sent = [client.async_infer("teacher", inputs) for _ in range(400)]  # far more than one batch: a queue
        drain = wait_until_drained(url, "teacher", timeout_s=120)
        assert drain.drained and drain.how == "pending gauge"
        assert _metric(url, "nv_inference_pending_request_count", "teacher") == 0  # nothing left queued
        for request in sent:
            request.get_result()
    finally:
        client.close()
    assert _metric(url, "nv_inference_request_success", "teacher") - before == 400


def test_a_model_the_server_does_not_report_is_not_waited_for(triton_server):
    missing = wait_until_drained(triton_server.metrics_url, "no_such_model", timeout_s=5)
    assert not missing.drained and "not in the server's metrics" in missing.how
    assert not wait_until_drained(None, "teacher").drained
