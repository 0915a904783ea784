"""Peak RSS of each model's serving processes, read from /proc for the embedded Triton (footprint table)."""

from __future__ import annotations

from urllib.parse import urlsplit

from loadtest.load.serving_memory import server_pid, serving_memory


def test_each_models_stub_processes_are_found_with_their_peak(triton_server):
    port = urlsplit(triton_server.http_url).port
    assert server_pid(port) is not None
    found = serving_memory("127.0.0.1", port)
    assert {"teacher", "student"} <= set(found)
    for entry in found.values():
        assert entry["processes"] >= 1
        assert entry["peak_rss_bytes"] >= entry["rss_bytes"] > 10_000_000  # a Python process holds > 10 MB


def test_a_remote_or_absent_server_gives_no_figure(triton_server):
    assert serving_memory("10.1.2.3", urlsplit(triton_server.http_url).port) == {}
    from loadtest.serving.ports import free_port

    assert serving_memory("127.0.0.1", free_port("127.0.0.1")) == {}
