"""Run a Locust scenario as a subprocess and hand back its run directory.

Why a subprocess: Locust monkey-patches the standard library with gevent on import; ``loadtest demo``
and ``loadtest sweep`` (and the analyzer) must never import it. This module only builds a command
line, streams the child's output and reads back what the run wrote.

Typical use::

    from loadtest.load.runner import run_locust

    run = run_locust("open_loop", "http://127.0.0.1:8000", run_time="60s", arrival_rate=50,
                     repository="model_repository", results_dir="results", kind="sweep-50rps")
    run.check()                  # LoadtestError if Locust failed to run
    run.run_dir                  # results/<run-id>/ (records/, metrics/, manifest.json, locust_bucketed_*.csv)
    run.summary()                # per-model figures from the raw records (numpy "linear" percentiles)

``scenario`` is a scenario name (``steady``, ``step``, ``spike``, ``soak``, ``open_loop``, ``ab``), a
locustfile, or a folder of them. Every keyword maps to one command-line option (see
``loadtest.load.settings.OPTIONS``); ``extra_args`` passes anything else through to Locust.
Never imports Locust or gevent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.credentials import URL_CREDENTIALS_ENV, split_host
from loadtest.errors import LoadtestError
from loadtest.rundir import DEFAULT_RESULTS_DIR, RunDir, create_run_dir

SCENARIOS_DIR = Path(__file__).resolve().parents[2] / "scenarios"
LOG_FILE = "locust.log"
# Locust's own CSV/HTML percentiles are bucketed (whole ms below 100 ms, 10 ms below 1 s, ...): the file
# names say so. The figures to report come from the raw records (summary, ``loadtest analyze``).
CSV_PREFIX = "locust_bucketed"
STOP_GRACE_S = 15.0
INCOMPLETE_EXIT_CODE = 3  # Locust stopped the run early and the manifest says why (loadtest.load.lifecycle)


def scenario_path(scenario: str | Path) -> Path:
    """A scenario name (``step``), a locustfile, or a folder -> an existing path."""
    path = Path(scenario)
    if path.exists():
        return path.resolve()
    named = SCENARIOS_DIR / f"{scenario}.py"
    if named.is_file():
        return named
    known = sorted(p.stem for p in SCENARIOS_DIR.glob("[!_]*.py")) if SCENARIOS_DIR.is_dir() else []
    choices = ", ".join(known) or "none"
    raise LoadtestError(f"no scenario '{scenario}': give a locustfile, a folder, or one of {choices}")


@dataclass(frozen=True)
class LocustRun:
    """What one Locust run left behind."""

    run_dir: Path
    exit_code: int
    command: list[str]
    duration_s: float
    output_tail: list[str] = field(default_factory=list)
    timed_out: bool = False
    signalled: int | None = None  # SIGINT/SIGTERM received by this process and passed on to Locust's group
    removed: bool = False  # the child failed before the test started: its run directory was removed

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def ok(self) -> bool:
        """Locust exited 0: it ran and no request failed (Locust exits 1 when any did)."""
        return self.exit_code == 0 and not self.timed_out

    def manifest(self) -> dict:
        return RunDir(self.run_dir).read_manifest()

    def locust_requests(self) -> int | None:
        """Locust's own request count for the run (``None`` if the run did not finish)."""
        return self.manifest().get("locust", {}).get("requests")

    def records(self):
        """The raw per-request records of every process (a pyarrow Table)."""
        from loadtest.rundir import read_records

        return read_records(self.run_dir)

    def summary(self):
        """Per-model figures from the records (``loadtest.load.summary.ModelSummary``)."""
        from loadtest.load.summary import summarize_run

        return summarize_run(self.run_dir)

    def incomplete_line(self) -> str | None:
        """One line when the manifest marks the run incomplete (records lost, a worker lost), else None."""
        manifest = self.manifest()
        if manifest.get("complete", True):
            return None
        records = manifest.get("records") or {}
        parts = []
        if records.get("incomplete_reason"):
            parts.append(f"records could not be written ({records['incomplete_reason']})")
        for lost in manifest.get("workers_lost") or []:
            parts.append(f"worker {lost.get('worker')} was lost mid-run")
        counts = f"{records.get('rows', 0):,} requests recorded"
        if records.get("not_recorded"):
            counts += f", {records['not_recorded']:,} not recorded"
        return (f"run incomplete: {'; '.join(parts) or 'see the manifest'}; the run was stopped early; {counts}. "
                f"The manifest marks it incomplete; `loadtest analyze {self.run_dir}` works on what was recorded")

    def error_line(self) -> str | None:
        """The child's own one-line reason (``loadtest: ...`` logged at ERROR), if it gave one."""
        for line in reversed(self.output_tail):
            if "ERROR" in line or "error:" in line.lower():
                text = line.split("loadtest: ", 1)[-1] if "loadtest: " in line else line.split("/ERROR/", 1)[-1]
                return text.strip()
        return None

    def check(self) -> LocustRun:
        """Raise LoadtestError unless Locust ran to the end (request failures alone are not an error here)."""
        if self.timed_out:
            raise LoadtestError(f"Locust did not finish in time; log: {self.log_path}")
        if self.removed:
            reason = self.error_line() or f"Locust exited with status {self.exit_code} before the test started"
            raise LoadtestError(f"{reason} (nothing was run; no run directory kept)")
        if self.exit_code not in (0, 1, INCOMPLETE_EXIT_CODE) or not self.manifest().get("end"):
            last = self.error_line()
            detail = f": {last}" if last else ""
            raise LoadtestError(f"Locust exited with status {self.exit_code}{detail} (log: {self.log_path})")
        return self


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_command(
    scenario: Path,
    host: str,
    run_dir: Path,
    options: Mapping[str, object],
    *,
    users: int | None,
    spawn_rate: float | None,
    run_time: str | float | None,
    processes: int | None,
    extra_args: Sequence[str],
    python: str,
) -> list[str]:
    """The ``python -m locust ...`` command line for a headless run writing into ``run_dir``."""
    command = [python, "-m", "locust", "-f", str(scenario), "--headless", "--host", host, "--only-summary"]
    command += ["--run-dir", str(run_dir), "--csv", str(run_dir / CSV_PREFIX), "--html", str(run_dir / f"{CSV_PREFIX}.html")]
    if users is not None:
        command += ["-u", str(users)]
    if spawn_rate is not None:
        command += ["-r", str(spawn_rate)]
    if run_time is not None:
        command += ["-t", f"{run_time}s" if isinstance(run_time, (int, float)) else str(run_time)]
    if processes:
        # Locust's master would listen on every interface; its forked workers connect over loopback.
        command += ["--processes", str(processes), "--master-bind-host", "127.0.0.1"]
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        command += [_flag(name), str(value)]
    return command + list(extra_args)


def run_locust(
    scenario: str | Path,
    host: str,
    *,
    users: int | None = None,
    spawn_rate: float | None = None,
    run_time: str | float | None = None,
    arrival_rate: float | None = None,
    arrival: str | None = None,
    stages: str | None = None,
    shape: str | None = None,
    models: Sequence[str] | None = None,
    protocol: str | None = None,
    repository: str | Path | None = None,
    dataset: str | Path | None = None,
    lengths: str | None = None,
    batch_size: int | None = None,
    max_in_flight: int | None = None,
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    run_dir: str | Path | None = None,
    kind: str | None = None,
    processes: int | None = None,
    metrics_port: int | None = None,
    triton_metrics_url: str | None = None,
    gpu_metrics_url: str | None = None,
    model_version: str | None = None,
    wait_ready: float | None = None,
    input_shape: str | None = None,
    input_data: str | Path | None = None,
    int_range: str | None = None,
    tokenizer: str | Path | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    on_output: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
    python: str = sys.executable,
    return_on_signal: bool = False,
) -> LocustRun:
    """Run ``scenario`` headless against ``host`` in a child process; return its run directory and exit code.

    The run directory is created here (``<results_dir>/<YYYYmmdd-HHMMSS>-<kind>``, never reused) unless
    ``run_dir`` names one. Locust's output goes to ``on_output`` line by line and to ``<run_dir>/locust.log``.
    ``timeout_s`` stops the child (SIGINT, then SIGKILL after a grace period) if it runs longer.
    SIGINT/SIGTERM to this process stop Locust's whole process group the same way and wait for it to
    finalise its records; then KeyboardInterrupt is raised, or, with ``return_on_signal``, the run is
    returned (``LocustRun.signalled``) so the caller can still print what was measured.
    Options left ``None`` take the scenario's defaults (and ``LOADTEST_*`` environment variables).
    """
    path = scenario_path(scenario)
    host, user_info = split_host(host)  # the password travels in the child's environment, never in argv or logs
    kind = kind or (path.stem if path.is_file() else path.name)
    target = Path(run_dir) if run_dir is not None else create_run_dir(results_dir, kind)
    target.mkdir(parents=True, exist_ok=True)
    options = {
        "arrival_rate": arrival_rate,
        "arrival": arrival,
        "stages": stages,
        "shape": shape,
        "models": models,
        "protocol": protocol,
        "repository": repository,
        "dataset": dataset,
        "lengths": lengths,
        "batch_size": batch_size,
        "max_in_flight": max_in_flight,
        "metrics_port": metrics_port,
        "triton_metrics_url": triton_metrics_url,
        "gpu_metrics_url": gpu_metrics_url,
        "model_version": model_version,
        "wait_ready": wait_ready,
        "input_shape": input_shape,
        "input_data": input_data,
        "int_range": int_range,
        "tokenizer": tokenizer,
    }
    command = build_command(
        path, host, target, options, users=users, spawn_rate=spawn_rate, run_time=run_time,
        processes=processes, extra_args=extra_args, python=python,
    )  # fmt: skip
    child_env = dict(os.environ)
    child_env.update(env or {})
    if user_info:
        child_env[URL_CREDENTIALS_ENV] = user_info
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    tail: deque[str] = deque(maxlen=200)
    started = time.monotonic()
    timed_out = False
    received: list[int] = []
    log_file = open(target / LOG_FILE, "w", buffering=1)  # line-buffered: a full disk fails a write, not close()
    with _closing_quietly(log_file), _forward_signals(received) as forwarding:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=child_env,
            start_new_session=True,  # its own process group: --processes workers stop with it
            preexec_fn=_die_with_parent,
        )
        forwarding.process = process

        def pump() -> None:
            logging_to_file = True
            for line in process.stdout:
                if logging_to_file:
                    try:
                        log_file.write(line)
                    except OSError:  # a full disk: keep reading (a blocked pipe would stall Locust)
                        logging_to_file = False
                tail.append(line.rstrip("\n"))
                if on_output is not None:
                    on_output(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while process.poll() is None:  # short waits: a signal handler runs between them
                if deadline is not None and time.monotonic() > deadline:
                    timed_out = True
                    _stop(process)
                    break
                try:
                    process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if process.poll() is None:  # an exception (not a signal we forward): never leave Locust loading
                _stop(process)
            _end_group(process.pid, grace_s=STOP_GRACE_S)  # a worker that outlived its master
            reader.join(timeout=5)
    removed = _remove_if_not_started(target, process.returncode, run_dir is None)
    if received and not return_on_signal:
        raise KeyboardInterrupt
    return LocustRun(target, process.returncode, command, time.monotonic() - started, list(tail), timed_out,
                     received[0] if received else None, removed)  # fmt: skip


class _closing_quietly:
    """Close the log at the end; on a full disk its last buffered bytes are lost, never the run's outcome."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self.file

    def __exit__(self, *exc) -> None:
        try:
            self.file.close()
        except OSError:
            pass


class _forward_signals:
    """While Locust runs, SIGINT/SIGTERM to this process reach Locust's process group through its main process.

    Why: Locust's group (master and ``--processes`` workers) lives in its own session so that a terminal's
    Ctrl-C does not hit it twice; a SIGTERM from a supervisor (systemd, CI, ``timeout``) to ``loadtest run``
    must still stop the load and let Locust finalise its records and manifest. The main process gets SIGINT
    and stops its workers over Locust's own protocol, so their final reports arrive; after the child exits,
    ``run_locust`` ends any process left in the group.
    """

    def __init__(self, received: list[int]):
        self.received = received
        self.process: subprocess.Popen | None = None
        self.previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        self.received.append(signum)
        if self.process is not None and self.process.poll() is None:
            try:  # Locust's main process stops its workers itself (and collects their last reports)
                os.kill(self.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGINT if ``loadtest`` dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _remove_if_not_started(target: Path, exit_code: int, created_here: bool) -> bool:
    """A run that never started (bad option, unreachable repository) leaves no directory that looks like a run.

    Only a directory this call created, holding nothing but Locust's log and CSV/HTML stubs, is removed; the
    log's last lines reach the caller through ``LocustRun.output_tail``.
    """
    import shutil

    from loadtest.rundir import MANIFEST, shard_paths

    if not created_here or exit_code in (0, 1) or (target / MANIFEST).exists() or shard_paths(target):
        return False
    shutil.rmtree(target, ignore_errors=True)
    return True


def _stop(process: subprocess.Popen) -> None:
    """SIGINT Locust's main process (it stops its workers, and every process writes its records), then, after a
    grace period, SIGKILL the whole group: no worker outlives the run."""
    try:
        os.kill(process.pid, signal.SIGINT)
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL if process.poll() is None else 0)
    except (ProcessLookupError, PermissionError):
        return
    if process.poll() is None:
        process.wait()
    else:  # the main process is gone; its workers may not be (a hung worker): end the group
        _end_group(process.pid)


def _end_group(pgid: int, grace_s: float = 5.0) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
