"""Faults a demanding user meets, reproduced against the real embedded Triton (issue: reliability and security).

- a password in ``--host`` and a token header never reach any file under results/, over real HTTPS and
  gRPC-TLS (a TLS-terminating proxy with a self-signed certificate in front of Triton);
- SIGTERM to ``loadtest run`` stops Locust's whole process group (``--processes`` workers too) and the run
  is finalised: manifest closed, records == Locust == Triton's success delta; every listening socket of
  the load generator (metrics endpoints, Locust's master port) is on loopback;
- an open-loop rate far above what a stalled server answers keeps its in-flight work capped: sends beyond
  the cap are dropped and counted, not piled up as greenlets.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pyarrow.compute as pc
import pytest
from _load_helpers import Staller, success_delta, triton_success
from _tls_proxy import TLSProxy, self_signed_cert

from loadtest.cli import run_cli
from loadtest.rundir import read_records
from loadtest.load.runner import run_locust
from loadtest.repository import ModelRepository

SECRET = "Pa55-w0rd-never-written"
TOKEN = "tok-7f3a9c-never-written"


def _files_containing(root, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n!r}" for n in needles if n in data]
    return found


def _eval_csv(repository, path):
    labels = ModelRepository(repository).read_metadata().labels
    rows = [{"text": f"the service answered request {i} quickly", "label": labels[i % len(labels)]} for i in range(24)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_credentials_never_written_over_https_and_grpc_tls(triton_server, tmp_path, monkeypatch, capsys):
    cert, key = self_signed_cert(tmp_path)
    https = TLSProxy(cert, key, triton_server.http_port)
    grpcs = TLSProxy(cert, key, triton_server.grpc_port, alpn=["h2"])
    monkeypatch.setenv("LOADTEST_SSL_CA_FILE", str(cert))
    monkeypatch.setenv("LOADTEST_HTTP_HEADERS", f"X-Api-Key: {TOKEN}")
    results = tmp_path / "results"
    common = ["--repository", str(triton_server.repository), "-u", "2", "-r", "2", "-t", "3s", "--results-dir",
              str(results), "--metrics-port", "0", "--triton-metrics-url", triton_server.metrics_url, "--quiet"]
    try:
        host = f"https://analyst:{SECRET}@127.0.0.1:{https.port}"
        assert run_cli(["run", "steady", "--host", host, *common]) == 0, capsys.readouterr()
        http_run = max(results.iterdir())
        grpc_host = f"grpcs://analyst:{SECRET}@127.0.0.1:{grpcs.port}"
        assert run_cli(["run", "steady", "--host", grpc_host, *common]) == 0, capsys.readouterr()
        grpc_run = max(p for p in results.iterdir() if p != http_run)
        dataset = _eval_csv(triton_server.repository, tmp_path / "eval.csv")
        assert run_cli(["eval", "--dataset", str(dataset), "--repo", str(triton_server.repository), "--host", host,
                        "--run-dir", str(http_run), "--bootstrap-resamples", "100"]) == 0, capsys.readouterr()
        assert run_cli(["analyze", str(http_run)]) == 0, capsys.readouterr()
    finally:
        https.close()
        grpcs.close()
    output = capsys.readouterr()
    for run_dir, protocol in ((http_run, "http"), (grpc_run, "grpc")):
        table = read_records(run_dir)
        assert table.num_rows > 0 and pc.all(table["success"]).as_py(), table["error"].unique()
        assert set(table["protocol"].to_pylist()) == {protocol}
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["host"].startswith(("https://127.0.0.1", "grpcs://127.0.0.1"))
        assert manifest["credentials"]["basic_auth"] and manifest["credentials"]["headers"] == ["X-Api-Key"]
    assert https.handshakes > 0 and grpcs.handshakes > 0  # really over TLS
    sent = b"\n".join(https.first_bytes).lower()
    basic = base64.b64encode(f"analyst:{SECRET}".encode())
    assert b"authorization: basic " + basic.lower() in sent and f"x-api-key: {TOKEN}".lower().encode() in sent
    for name in ("manifest.json", "locust_bucketed.html", "quality/summary.json", "report.html", "locust.log"):
        assert (http_run / name).is_file(), name
    needles = [SECRET.encode(), basic, TOKEN.encode(), str(key.read_text()).splitlines()[1].encode()]
    assert _files_containing(results, needles) == []
    assert SECRET not in output.out + output.err and TOKEN not in output.out + output.err


def _listening(pids: set[int]) -> list[tuple[str, int, int]]:
    return [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]  # fmt: skip


def test_sigterm_reaches_locust_group_and_run_finalises(triton_server, tmp_path):
    """SIGTERM to `loadtest run --processes 2`: every Locust process stops, the manifest is finalised, counts agree."""
    from loadtest.serving.ports import free_port

    results = tmp_path / "results"
    metrics_port = free_port()
    before = triton_success(triton_server.metrics_url)
    parent = subprocess.Popen(
        [sys.executable, "-m", "loadtest.cli", "run", "steady", "--host", triton_server.http_url, "--repository",
         str(triton_server.repository), "-u", "4", "-r", "4", "-t", "90s", "--processes", "2", "--results-dir",
         str(results), "--metrics-port", str(metrics_port), "--triton-metrics-url", triton_server.metrics_url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = parent.stdout.readline()
            lines.append(line)
            if "run directory" in line or not line:
                break
        assert any("run directory" in line for line in lines), "".join(lines)
        time.sleep(3)  # load for a while: workers spawned and sending
        group = {p.pid for p in psutil.Process(parent.pid).children(recursive=True)}
        assert len(group) >= 3, "master and two workers"
        sockets = _listening(group)
        assert {port for _, port, _ in sockets} >= {metrics_port, metrics_port + 1, metrics_port + 2}
        assert all(ip in ("127.0.0.1", "::1") for ip, _, _ in sockets), sockets
        parent.send_signal(signal.SIGTERM)
        rest, _ = parent.communicate(timeout=90)
    finally:
        if parent.poll() is None:
            parent.kill()
    output = "".join(lines) + rest
    assert parent.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM: the load was stopped and the run finalised" in output
    time.sleep(0.5)
    alive = [pid for pid in group if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], "Locust processes still running after SIGTERM"
    delta = success_delta(before, triton_success(triton_server.metrics_url))
    run_dir = next(results.iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    table = read_records(run_dir)
    assert manifest["end"] is not None and manifest["end"] - manifest["start"] < 60  # stopped early, not at -t
    assert table.num_rows == manifest["records"]["rows"] == manifest["locust"]["requests"] == sum(delta.values())


def test_open_loop_in_flight_work_is_capped(triton_server, tmp_path):
    """A 3 s SIGSTOP under 300 req/s per model with --max-in-flight 2: waiting sends are capped, drops counted."""
    staller = Staller(triton_server.tritonserver_pid, delay_s=1.5, pause_s=3.0)

    def watch(line: str) -> None:
        if "run directory" in line:
            staller.trigger()

    try:
        run = run_locust(
            "open_loop", triton_server.http_url, repository=triton_server.repository, results_dir=tmp_path / "results",
            arrival_rate=300, run_time=6, max_in_flight=2, metrics_port=0, triton_metrics_url="none",
            on_output=watch, timeout_s=120,
        )  # fmt: skip
    finally:
        staller.join()
    assert run.exit_code in (0, 1), "\n".join(run.output_tail[-30:])
    manifest = run.manifest()
    dropped = sum(n for stages in manifest["dropped"].values() for n in stages.values())
    assert dropped > 0, manifest["dropped"]
    assert any("open-loop sends are dropped" in line for line in run.output_tail)
    table = read_records(run.run_dir)
    assert table.num_rows == manifest["records"]["rows"]
    # every send is either a record or a counted drop: nothing vanished
    late = np.asarray(table["late"].to_pylist())
    assert late.any()


def test_connection_storm_backs_off_and_is_recorded(triton_server, tmp_path):
    """The server's port goes away mid-run: closed-loop users back off (counted), every failure is a record."""
    proxy = TLSProxy(None, None, triton_server.http_port)
    cut = {"done": False}

    def watch(line: str) -> None:
        if "run directory" in line and not cut["done"]:
            cut["done"] = True
            import threading

            threading.Timer(2.0, proxy.close).start()

    run = run_locust(
        "steady", f"http://127.0.0.1:{proxy.port}", repository=triton_server.repository, users=4, spawn_rate=4,
        run_time=6, results_dir=tmp_path / "results", metrics_port=0, triton_metrics_url=triton_server.metrics_url,
        on_output=watch, timeout_s=120,
    )  # fmt: skip
    proxy.close()
    manifest = run.manifest()
    table = read_records(run.run_dir)
    failed = table.filter(pc.invert(table["success"]))
    assert table.num_rows == manifest["records"]["rows"] == manifest["locust"]["requests"]
    assert failed.num_rows > 0 and table.num_rows > failed.num_rows, "successes before the cut, failures after"
    assert manifest["backoff"]["events"] > 0 and manifest["backoff"]["seconds"] > 0
    # Without backoff 4 users fire thousands of refused requests in 4 s; with it, each waits up to 2 s:
    # 4 users x (about 6 doubling waits to the cap + 1 per 2 s) stays far below that.
    assert failed.num_rows <= 4 * (6 + 4) + 8, failed.num_rows
    assert any("back off" in line for line in run.output_tail)
    from loadtest.analysis.reconcile import reconcile

    line = reconcile(run.run_dir).line()
    assert "never reached Triton" in line and "backed off" in line, line


@pytest.fixture
def small_disk(tmp_path):
    """A 160 KiB tmpfs: the record writer's real write path meets ENOSPC (needs root to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_stops_the_run_with_exact_counts(triton_server, small_disk, tmp_path, capsys):
    """Results on a full disk: one line, exit 3, manifest incomplete with records + not recorded == Locust's count,
    and once space is freed `loadtest analyze` works on what was recorded."""
    results = small_disk / "results"
    code = run_cli(["run", "steady", "--host", triton_server.http_url, "--repository", str(triton_server.repository),
                    "-u", "4", "-r", "4", "-t", "90s", "--results-dir", str(results), "--metrics-port", "0",
                    "--triton-metrics-url", "none", "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 3, out + err
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and "records could not be written" in errors[0] and "No space left" in errors[0], err
    assert "Traceback" not in out + err
    run_dir = next(results.iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    table = read_records(run_dir)
    assert manifest["complete"] is False and manifest["end"] is not None
    assert manifest["end"] - manifest["start"] < 80, "stopped when the disk filled, not at -t"
    records = manifest["records"]
    assert "No space left" in records["incomplete_reason"]
    assert records["rows"] == table.num_rows > 0 and records["not_recorded"] > 0
    assert records["rows"] + records["not_recorded"] == manifest["locust"]["requests"]  # exact accounting
    assert not list((run_dir / "records").glob(".*"))  # no torn temporary shard, reserve released
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)  # the user frees space
    assert run_cli(["analyze", str(run_dir)]) == 0, capsys.readouterr()
    summary = (run_dir / "tables" / "summary.md").read_text()
    assert "reconciliation:" in summary and "not recorded" in summary


def test_dead_worker_is_loud_marks_the_manifest_and_fails(triton_server, tmp_path):
    """SIGKILL one of two --processes workers: an ERROR line, exit 3, workers_lost in the manifest, run stopped."""
    killed: dict = {}

    def watch(line: str) -> None:
        if "run directory" in line and not killed:
            killed["at"] = time.monotonic()
            import threading

            run_dir = line.rsplit("run directory", 1)[1].strip()
            threading.Timer(3.0, _kill_a_worker, args=(run_dir, killed)).start()

    run = run_locust(
        "steady", triton_server.http_url, repository=triton_server.repository, users=4, spawn_rate=4, run_time=60,
        processes=2, results_dir=tmp_path / "results", metrics_port=0, triton_metrics_url=triton_server.metrics_url,
        on_output=watch, timeout_s=150,
    )  # fmt: skip
    assert killed.get("pid"), "no worker was found to kill"
    assert run.exit_code == 3, "\n".join(run.output_tail[-30:])
    assert any("stopped answering mid-run" in line and "ERROR" in line for line in run.output_tail)
    manifest = run.manifest()
    assert manifest["complete"] is False and len(manifest["workers_lost"]) == 1
    lost = manifest["workers_lost"][0]
    assert lost["worker"].endswith(f"-{killed['pid']}") and lost["rows_on_disk"] >= 0
    assert manifest["end"] - manifest["start"] < 45, "stopped after the loss, not at -t"
    table = read_records(run.run_dir)
    assert table.num_rows == manifest["records"]["rows"]
    assert "incomplete" in run.incomplete_line() and "was lost" in run.incomplete_line()
    from loadtest.analysis.reconcile import reconcile

    assert "was lost mid-run" in reconcile(run.run_dir).line()


def _kill_a_worker(run_dir: str, killed: dict) -> None:
    """SIGKILL one forked Locust worker of the run writing ``run_dir`` (the main process's child)."""
    for proc in psutil.process_iter(["pid", "cmdline", "ppid"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "locust" in cmdline and run_dir in cmdline:
            children = proc.children()
            if children:
                killed["pid"] = children[0].pid
                os.kill(children[0].pid, signal.SIGKILL)
                return


BINARY = b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01binary\x80\x81"


@pytest.mark.parametrize("case", ["binary-csv", "corrupt-tokenizer", "binary-tokenizer", "wrong-protocol-port"])
def test_eval_bad_inputs_against_the_server(case, triton_server, tmp_path, monkeypatch, capsys):
    """Bad eval inputs that are only read once the server answered: still one line, exit 2, no traceback."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(triton_server.repository, repo, ignore=shutil.ignore_patterns("*.onnx", "1"))
    dataset = _eval_csv(triton_server.repository, tmp_path / "eval.csv")
    host = triton_server.http_url
    expected = {"binary-csv": "UTF-8", "corrupt-tokenizer": "tokenizer", "binary-tokenizer": "tokenizer",
                "wrong-protocol-port": "answers GRPC, not HTTP"}[case]  # fmt: skip
    if case == "binary-csv":
        dataset.write_bytes(BINARY * 4)
    elif case == "corrupt-tokenizer":
        (repo / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
    elif case == "binary-tokenizer":
        (repo / "tokenizer.json").write_bytes(BINARY)
    else:
        host = f"http://127.0.0.1:{triton_server.grpc_port}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")
    code = run_cli(["eval", "--dataset", str(dataset), "--repo", str(repo), "--host", host])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in out + err, out + err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
