"""Every bad invocation is one line, exit status 2, no traceback, and leaves nothing that looks like a run.

A table of invocations across every command: binary (non-UTF-8) manifest, config.pbtxt, loadtest.json,
policy, cost file and CSV; out-of-range ports; unwritable output paths; malformed stage plans; negative
users; zero batch sizes; a corrupt tokenizer; the wrong protocol's port; infinite, huge and NaN rates and
bounds; invalid bind addresses; an error text holding ``:x:`` (rich would draw an emoji). Each runs
in-process through ``loadtest.cli.run_cli`` (what ``main`` exits with), in a fresh working directory whose
``results/`` must stay empty. ``--debug`` brings the traceback back.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _load_repo import make_repository

from loadtest.cli import run_cli

BINARY = b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01binary\x80\x81"
SECRET = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files and endpoints the table points at (built once; each row runs in its own directory)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    repo = make_repository(root / "repo")
    w = {"root": root, "repo": repo}

    def broken_repo(name: str, mutate) -> Path:
        path = root / name
        shutil.copytree(repo, path)
        mutate(path)
        return path

    w["repo_binary_meta"] = broken_repo("repo-binary-meta", lambda p: (p / "loadtest.json").write_bytes(BINARY))
    w["repo_binary_config"] = broken_repo(
        "repo-binary-config", lambda p: (p / "student" / "config.pbtxt").write_bytes(BINARY)
    )
    w["repo_bad_config"] = broken_repo(
        "repo-bad-config", lambda p: (p / "teacher" / "config.pbtxt").write_text("max_batch_size: [not a number\n")
    )
    w["repo_bad_tokenizer"] = broken_repo(
        "repo-bad-tokenizer", lambda p: (p / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
    )
    w["repo_binary_tokenizer"] = broken_repo("repo-bin-tokenizer", lambda p: (p / "tokenizer.json").write_bytes(BINARY))
    dataset = root / "eval.csv"
    dataset.write_text("text,label\n" + "".join(f"sentence number {i},{'abc'[i % 3]}\n" for i in range(12)))
    w["dataset"] = dataset
    (root / "binary.csv").write_bytes(BINARY * 4)
    w["binary_csv"] = root / "binary.csv"
    (root / "binary.yaml").write_bytes(BINARY)
    w["binary_yaml"] = root / "binary.yaml"
    (root / "nan-policy.yaml").write_text("rules:\n  - metric: agreement\n    min: .nan\n")
    w["nan_policy"] = root / "nan-policy.yaml"
    (root / "inf-policy.yaml").write_text("regression:\n  - metric: p99_ms\n    max_worsening: .inf\n")
    w["inf_policy"] = root / "inf-policy.yaml"
    (root / "a-file").write_text("not a directory\n")
    w["file"] = root / "a-file"
    run = root / "run-binary-manifest"
    (run / "records").mkdir(parents=True)
    (run / "manifest.json").write_bytes(BINARY)
    w["run_binary_manifest"] = run
    run = root / "run-bad-shard"
    (run / "records").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run_id": "x", "start": 1.0, "end": 2.0}))
    (run / "records" / "w-000001.parquet").write_bytes(BINARY * 10)
    w["run_bad_shard"] = run
    w["grpc_port"], w["grpc_server"] = _grpc_server()
    w["http_port"], w["http_server"] = _http_server()
    yield w
    w["grpc_server"].stop(0)
    w["http_server"].shutdown()


def _grpc_server():
    """A real gRPC server (HTTP/2) with no services: what HTTP sees on a Triton gRPC port."""
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return port, server


def _http_server():
    """A real HTTP/1.1 server answering 404: what gRPC sees on an HTTP port."""

    class NotTriton(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotTriton)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HOST = "http://127.0.0.1:8000"
RUN = ["run", "steady", "--host", HOST, "--repository", "{repo}", "-t", "5s", "--metrics-port", "0"]
EVAL = ["eval", "--dataset", "{dataset}", "--repo", "{repo}", "--host", HOST]

# (id, argv, a fragment the one line must contain); "{name}" is filled from the world fixture.
CASES = [
    # loadtest run: bounds, ports, stage plans, hosts, files
    ("run-users-negative", RUN + ["-u", "-1"], "-u/--users"),
    ("run-users-huge", RUN + ["-u", "10000000"], "-u/--users"),
    ("run-rate-inf", RUN[:2] + ["--arrival-rate", "inf"] + RUN[2:], "--arrival-rate"),
    ("run-rate-1e9", RUN + ["--arrival-rate", "1e9"], "--arrival-rate"),
    ("run-rate-nan", RUN + ["--arrival-rate", "nan"], "--arrival-rate"),
    ("run-rate-negative", RUN + ["--arrival-rate", "-5"], "--arrival-rate"),
    ("run-spawn-rate-zero", RUN + ["-r", "0"], "--spawn-rate"),
    ("run-time-zero", RUN + ["-t", "0s"], "--run-time"),
    ("run-time-garbage", RUN + ["-t", "soon"], "not a duration"),
    ("run-stages-not-number", RUN + ["--stages", "30s:many"], "not a number"),
    ("run-stages-shape", RUN + ["--stages", "fast"], "DURATION:VALUE"),
    ("run-stages-inf", RUN + ["--stages", "30s:inf"], "finite"),
    ("run-stages-empty", RUN + ["--stages", ","], "stage plan is empty"),
    ("run-stages-emoji-text", RUN + ["--stages", "10s:x:"], ":x:"),
    ("run-batch-zero", RUN + ["--batch-size", "0"], "--batch-size"),
    ("run-processes-negative", RUN + ["--processes", "-5"], "--processes"),
    ("run-host-port-range", ["run", "steady", "--host", "http://127.0.0.1:70000", "--repository", "{repo}"], "invalid port"),
    ("run-host-port-zero", ["run", "steady", "--host", "http://127.0.0.1:0", "--repository", "{repo}"], "port 0"),
    ("run-host-scheme", ["run", "steady", "--host", "ftp://127.0.0.1:8000", "--repository", "{repo}"], "scheme"),
    ("run-host-secret-bad-port", ["run", "steady", "--host", f"http://user:{SECRET}@127.0.0.1:99999",
                                  "--repository", "{repo}"], "invalid port"),  # fmt: skip
    ("run-metrics-port-range", RUN[:-1] + ["70000"], "--metrics-port"),
    ("run-metrics-port-negative", RUN[:-1] + ["-1"], "--metrics-port"),
    ("run-metrics-address", RUN + ["--metrics-address", "not-an-ip"], "not an IP address"),
    ("run-results-under-file", RUN + ["--results-dir", "{file}/results"], "--results-dir"),
    ("run-repository-is-file", ["run", "steady", "--host", HOST, "--repository", "{file}"], "not a directory"),
    ("run-binary-loadtest-json", ["run", "steady", "--host", HOST, "--repository", "{repo_binary_meta}"], "not UTF-8"),
    ("run-binary-config", ["run", "steady", "--host", HOST, "--repository", "{repo_binary_config}"], "not UTF-8"),
    ("run-bad-config", ["run", "steady", "--host", HOST, "--repository", "{repo_bad_config}"], "not a valid Triton"),
    ("run-missing-dataset", RUN + ["--dataset", "nope.csv"], "--dataset"),
    ("run-unknown-scenario", ["run", "nosuch", "--host", HOST, "--repository", "{repo}"], "no scenario"),
    # loadtest eval
    ("eval-batch-zero", EVAL + ["--batch-size", "0"], "--batch-size"),
    ("eval-batch-huge", EVAL + ["--batch-size", "100000000"], "--batch-size"),
    ("eval-timeout-zero", EVAL + ["--timeout", "0"], "--timeout"),
    ("eval-timeout-nan", EVAL + ["--timeout", "nan"], "--timeout"),
    ("eval-host-port-range", EVAL[:-1] + ["http://127.0.0.1:65536"], "invalid port"),
    ("eval-http-to-grpc-port", EVAL[:-1] + ["http://127.0.0.1:{grpc_port}"], "port"),
    ("eval-grpc-to-http-port", EVAL[:-1] + ["grpc://127.0.0.1:{http_port}"], "port"),
    ("eval-nobody-listening", EVAL[:-1] + ["http://127.0.0.1:{closed_port}"], "cannot reach"),
    ("eval-threshold-nan", EVAL + ["--rare-threshold", "nan"], "--rare-threshold"),
    ("eval-results-under-file", EVAL + ["--results", "{file}/results"], "--results"),
    # loadtest analyze / plan / gate
    ("analyze-missing", ["analyze", "no-such-run"], "does not exist"),
    ("analyze-binary-manifest", ["analyze", "{run_binary_manifest}"], "manifest"),
    ("analyze-corrupt-shard", ["analyze", "{run_bad_shard}"], "Parquet"),
    ("analyze-percentile-range", ["analyze", "{run_bad_shard}", "--percentile", "150"], "--percentile"),
    ("analyze-budget-nan", ["analyze", "{run_bad_shard}", "--budget-ms", "nan"], "--budget-ms"),
    ("analyze-binary-cost-file", ["analyze", "{run_bad_shard}", "--cost-file", "{binary_yaml}"], "UTF-8"),
    ("plan-peak-qps-1e308", ["plan", "{run_bad_shard}", "--peak-qps", "1e308"], "--peak-qps"),
    ("plan-peak-qps-nan", ["plan", "{run_bad_shard}", "--peak-qps", "nan"], "--peak-qps"),
    ("plan-headroom-below-1", ["plan", "{run_bad_shard}", "--peak-qps", "100", "--headroom", "0.5"], "--headroom"),
    ("gate-nan-bound", ["gate", "{run_bad_shard}", "--policy", "{nan_policy}"], "finite"),
    ("gate-inf-allowance", ["gate", "{run_bad_shard}", "--policy", "{inf_policy}"], "finite"),
    ("gate-binary-policy", ["gate", "{run_bad_shard}", "--policy", "{binary_yaml}"], "UTF-8"),
    # loadtest sweep / serve / demo / export / observability
    ("sweep-budget-nan", ["sweep", "--host", HOST, "--budget-ms", "nan", "--repository", "{repo}"], "--budget-ms"),
    ("sweep-max-load-1e9", ["sweep", "--host", HOST, "--budget-ms", "50", "--max-load", "1e9",
                            "--repository", "{repo}"], "--max-load"),  # fmt: skip
    ("sweep-host-busy-share-2", ["sweep", "--host", HOST, "--budget-ms", "50", "--host-busy-share", "2",
                                 "--repository", "{repo}"], "--host-busy-share"),
    ("sweep-host-quiet-wait-negative", ["sweep", "--host", HOST, "--budget-ms", "50", "--host-quiet-wait", "-1",
                                        "--repository", "{repo}"], "--host-quiet-wait"),
    ("sweep-host-port", ["sweep", "--host", "http://127.0.0.1:123456", "--budget-ms", "50", "--repository", "{repo}"],
     "invalid port"),  # fmt: skip
    ("sweep-binary-loadtest-json", ["sweep", "--host", HOST, "--budget-ms", "50", "--repository",
                                    "{repo_binary_meta}"], "UTF-8"),  # fmt: skip
    ("serve-port-range", ["serve", "--repo", "{repo}", "--http-port", "70000"], "--http-port"),
    ("serve-address-invalid", ["serve", "--repo", "{repo}", "--address", "300.1.1.1"], "not an IP address"),
    ("serve-address-not-local", ["serve", "--repo", "{repo}", "--address", "203.0.113.7"], "not an address of"),
    ("demo-rate-inf", ["demo", "--rate", "inf"], "--rate"),
    ("demo-percentile", ["demo", "--percentile", "100"], "--percentile"),
    ("demo-results-under-file", ["demo", "--results", "{file}/results"], "--results"),
    ("demo-generative-slo", ["demo", "--generative", "--slo", "ttft_ms=100"], "--slo"),
    ("genpair-cache-under-file", ["genpair", "--cache-dir", "{file}/cache"], "cache"),
    ("export-missing-teacher", ["export", "--teacher", "no-such-model", "--repo", "out"], "no-such-model"),
    ("gpu-exporter-port", ["gpu-exporter", "--port", "70000"], "--port"),
    ("prometheus-config-unwritable", ["prometheus-config", "--triton", "127.0.0.1:8002", "-o", "{file}/p.yml"],
     "a-file"),  # fmt: skip
    ("unknown-command", ["frobnicate"], "No such command"),
]


def _fill(argv: list[str], world) -> list[str]:
    values = {k: str(v) for k, v in world.items() if isinstance(v, (str, int, Path))}
    values["closed_port"] = str(_closed_port())
    return [a.format(**values) if "{" in a else a for a in argv]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(argv, fragment, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")  # one logical line must not be folded by the terminal width
    (tmp_path / "results").mkdir()
    code = run_cli(_fill(argv, world))
    out, err = capsys.readouterr()
    text = out + err
    assert code == 2, text
    assert "Traceback" not in text, text
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error: "), text
    assert fragment in lines[0], text
    assert "❌" not in text and SECRET not in text
    leftovers = [p for p in (tmp_path / "results").rglob("*")]
    assert leftovers == [], leftovers
    assert not any((tmp_path / name).exists() for name in ("model_repository",)), "no output was created"


def test_table_is_broad():
    """>= 40 invocations, covering every command."""
    from loadtest.cli import app

    assert len(CASES) >= 40
    commands = {c.name for c in app.registered_commands} | {c.callback.__name__ for c in app.registered_commands}
    covered = {c[1][0] for c in CASES}
    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    assert names <= covered | {"help"}, names - covered
    assert commands


def test_debug_shows_the_traceback(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = run_cli(["--debug", "analyze", str(world["run_binary_manifest"])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" in err
