"""Client cost: CPU seconds per request of the load generator, ours against bare Locust and wrk.

One run, side by side, rounds interleaved (wrk, bare Locust, TritonUser HTTP, TritonUser gRPC, then again),
against a no-op ONNX model on the embedded Triton, each client with the same connections and duration:

- wrk (one thread) POSTing the KServe v2 JSON body of a 16-token request;
- bare Locust ``FastHttpUser`` POSTing the same JSON;
- our ``TritonUser`` over HTTP (tritonclient, binary tensors) and over gRPC, with records and the client
  metrics endpoint on, exactly as ``locust -f scenarios/steady.py`` runs it.

A client's cost is its process's user+system CPU seconds (``/proc/<pid>/stat``) over the steady window
(after ramp-up, before the end) divided by the requests Locust counted in the same window (its per-second
stats history); for wrk, whole-run CPU (``wait4``) over its request count. Ratios are to bare Locust in the
same round. Nothing is asserted: the figures are what this machine measured while it ran.

    python benchmarks/client_cost.py                       # 2 rounds of 15 s, 16 connections
    python benchmarks/client_cost.py --rounds 1 --duration 10 --profile /tmp/prof   # + py-spy flame graphs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
BIN = Path(sys.executable).parent
MODEL = "noop"
TICKS = os.sysconf("SC_CLK_TCK")

BARE_LOCUSTFILE = '''
"""Bare Locust: FastHttpUser POSTing the KServe v2 JSON of one request, nothing else."""
from locust import FastHttpUser, constant, task

BODY = {body!r}
HEADERS = {{"Content-Type": "application/json"}}


class BareKServeUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def infer(self):
        self.client.post("/v2/models/{model}/infer", data=BODY, headers=HEADERS, name="{model}")
'''

WRK_LUA = """wrk.method = "POST"
wrk.body   = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def build_noop_repository(root: Path, tokens: int) -> tuple[Path, dict]:
    """A repository with one ONNX model that does (almost) nothing, and the KServe JSON of one request."""
    import numpy as np
    import onnx
    from _load_repo import make_repository
    from onnx import TensorProto, helper

    from loadtest.repository import ModelRepository, TensorSpec, TritonModelSettings, build_config

    make_repository(root, max_length=max(64, tokens))
    for name in ("teacher", "student"):
        shutil.rmtree(root / name, ignore_errors=True)
    repo = ModelRepository(root)
    meta = json.loads((root / "loadtest.json").read_text())
    meta.update(teacher=MODEL, student=MODEL)
    (root / "loadtest.json").write_text(json.dumps(meta))
    # logits[b, :] = sum(attention_mask[b]) + 0 * sum(input_ids[b]): both inputs used, no real compute
    graph = helper.make_graph(
        [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["input_ids"], ["i"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["m", "i"], ["s"]),
         helper.make_node("ReduceSum", ["s", "axes"], ["r"], keepdims=1),
         helper.make_node("Mul", ["r", "ones"], ["logits"])],
        MODEL,
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("ones", TensorProto.FLOAT, [1, 3], [1.0, 1.0, 1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / MODEL / "1").mkdir(parents=True)
    onnx.save(model, str(root / MODEL / "1" / "model.onnx"))
    inputs = [TensorSpec(n, "int64", (-1,)) for n in ("input_ids", "attention_mask")]
    repo.write_config(build_config(MODEL, inputs, [TensorSpec("logits", "float32", (3,))],
                                   TritonModelSettings(max_batch_size=16)))
    ids = np.arange(tokens, dtype=np.int64) % 50 + 5
    body = {"inputs": [
        {"name": "input_ids", "shape": [1, tokens], "datatype": "INT64", "data": ids.tolist()},
        {"name": "attention_mask", "shape": [1, tokens], "datatype": "INT64", "data": [1] * tokens},
    ], "outputs": [{"name": "logits"}]}
    return root, body


@dataclass
class Measurement:
    client: str
    round: int
    requests: int
    window_s: float
    cpu_s: float
    failures: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.window_s if self.window_s else float("nan")

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")


def _proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)


def _interp(samples: list[tuple[float, float]], t: float) -> float:
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c0
    return samples[0][1] if t < samples[0][0] else samples[-1][1]


def run_locust(name: str, rnd: int, locustfile: Path, host: str, extra: list[str], args, work: Path,
               profile_dir: Path | None) -> Measurement:
    prefix = work / f"{name}-{rnd}"
    cmd = [str(BIN / "locust"), "-f", str(locustfile), "--headless", "-u", str(args.connections),
           "-r", str(args.connections), "-t", f"{args.duration}s", "--host", host, "--csv", str(prefix),
           "--only-summary", "--loglevel", "WARNING", *extra]
    if profile_dir is not None:
        cmd = [str(BIN / "py-spy"), "record", "--nonblocking", "--rate", "200", "--format", args.profile_format,
               "-o", str(profile_dir / f"{name}.{'svg' if args.profile_format == 'flamegraph' else 'txt'}"), "--", *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=work)
    pid = proc.pid
    samples: list[tuple[float, float]] = []
    if profile_dir is not None:  # py-spy's child is the locust process
        time.sleep(1.0)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        pid = int(children[0]) if children else proc.pid
    deadline = time.time() + args.duration + 90  # figures come from the run itself; never wait on a stuck exit
    while proc.poll() is None:
        cpu = _proc_cpu(pid)
        if cpu is not None:
            samples.append((time.time(), cpu))
        if time.time() > deadline:
            proc.kill()
            print(f"  ({name}: the process did not exit 90 s after its run; killed)", flush=True)
        time.sleep(0.2)
    err = proc.stderr.read()
    history = list(csv.DictReader(open(f"{prefix}_stats_history.csv")))
    rows = [(float(r["Timestamp"]), int(r["Total Request Count"]), int(r["Total Failure Count"]))
            for r in history if r["Name"] == "Aggregated"]
    # steady window: skip the first 3 s (start-up and ramp) and the last second (stopping)
    rows = [r for r in rows if r[1] > 0]
    if len(rows) < 4 or len(samples) < 4:
        raise SystemExit(f"{name}: too little history to measure (exit {proc.returncode}):\n{err[-2000:]}")
    first = next(r for r in rows if r[0] >= rows[0][0] + 3)
    last = rows[-2]
    cpu = _interp(samples, last[0]) - _interp(samples, first[0])
    return Measurement(name, rnd, last[1] - first[1], last[0] - first[0], cpu, last[2] - first[2])


def run_wrk(rnd: int, host: str, body: dict, args, work: Path) -> Measurement:
    script = work / "post.lua"
    script.write_text(WRK_LUA.format(body=json.dumps(body)))
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "-s", str(script),
           f"{host}/v2/models/{MODEL}/infer"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, _, usage = os.wait4(proc.pid, 0)
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not match:
        raise SystemExit(f"wrk: unexpected output:\n{out}")
    seconds = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Measurement("wrk", rnd, int(match.group(1)), seconds, usage.ru_utime + usage.ru_stime,
                       int(errors.group(1)) if errors else 0)


def round_ratios(results: list[Measurement], client: str, baseline: str) -> list[float]:
    """``client``'s CPU per request over ``baseline``'s in the same round, round by round."""
    ratios = []
    for m in (m for m in results if m.client == client):
        base = next((b for b in results if b.client == baseline and b.round == m.round), None)
        if base is not None:
            ratios.append(m.cpu_us_per_request / base.cpu_us_per_request)
    return ratios


def client_arguments(doc: str, clients: str, connections_help: str, tokens_help: str) -> argparse.ArgumentParser:
    """The options both client-cost benchmarks take (this one and stream_client_cost.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=15, help="seconds per client per round")
    parser.add_argument("--connections", type=int, default=16, help=connections_help)
    parser.add_argument("--tokens", type=int, default=16, help=tokens_help)
    parser.add_argument("--clients", default=clients)
    parser.add_argument("--profile", type=Path, help="profile each Locust client with py-spy in round 1, into this folder")
    parser.add_argument("--profile-format", default="flamegraph", choices=["flamegraph", "raw", "speedscope"],
                        help="py-spy output: flamegraph (SVG) or raw (collapsed stacks, for grep and sums)")
    return parser


def main() -> None:
    parser = client_arguments(__doc__, "wrk,bare,http,grpc", "Locust users / wrk connections", "tokens per request")
    args = parser.parse_args()

    from loadtest.serving import EmbeddedTriton, ServerPorts
    from loadtest.serving.ports import free_port

    work = Path(tempfile.mkdtemp(prefix="client-cost-"))
    repo, body = build_noop_repository(work / "repository", args.tokens)
    bare = work / "bare_locust.py"
    bare.write_text(BARE_LOCUSTFILE.format(body=json.dumps(body), model=MODEL))
    steady = ROOT / "scenarios" / "steady.py"
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    results: list[Measurement] = []
    with EmbeddedTriton(repo, ServerPorts(0, 0, 0), log_file=work / "triton.log") as server:
        ours = ["--repository", str(repo), "--models", MODEL, "--lengths", f"fixed:{args.tokens}",
                "--records-dir", str(work / "results"), "--triton-metrics-url", "none"]
        print(f"no-op model on the embedded Triton; {args.connections} connections, {args.duration} s per client, "
              f"{args.tokens} tokens, {args.rounds} interleaved round(s); {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        for rnd in range(1, args.rounds + 1):
            for client in clients:
                profile = args.profile if (args.profile and rnd == 1 and client != "wrk") else None
                if profile:
                    profile.mkdir(parents=True, exist_ok=True)
                if client == "wrk":
                    m = run_wrk(rnd, server.http_url, body, args, work)
                elif client == "bare":
                    m = run_locust("bare", rnd, bare, server.http_url, [], args, work, profile)
                else:
                    url = server.http_url if client == "http" else server.grpc_url
                    extra = ours + ["--metrics-port", str(free_port("127.0.0.1"))]
                    m = run_locust(client, rnd, steady, url, extra, args, work, profile)
                results.append(m)
                print(f"  round {rnd} {client:>5}: {m.rps:8,.0f} req/s, {m.cpu_us_per_request:6.0f} µs CPU/request"
                      f"{f', {m.failures} failures' if m.failures else ''}", flush=True)
    print()
    label = {"wrk": "wrk (KServe JSON)", "bare": "bare Locust FastHttpUser (same JSON)",
             "http": "loadtest TritonUser, HTTP", "grpc": "loadtest TritonUser, gRPC"}
    print("| client | req/s | client CPU per request | vs bare Locust |")
    print("|---|---|---|---|")
    for client in clients:
        mine = [m for m in results if m.client == client]
        ratios = round_ratios(results, client, "bare")
        ratio = " / ".join(f"{r:.2f}×" for r in ratios) if ratios else "—"
        print(f"| {label.get(client, client)} | {' / '.join(f'{m.rps:,.0f}' for m in mine)} | "
              f"{' / '.join(f'{m.cpu_us_per_request:.0f}' for m in mine)} µs | {ratio} |")
    if args.profile:
        print(f"\npy-spy flame graphs in {args.profile}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
