"""Embedded serving efficiency: served req/s against ONNX Runtime in-process, student and teacher, one run.

Serves the quick demo pair (built once, cached under ~/.cache/loadtest) on the embedded Triton and drives
each model alone with wrk (KServe v2 JSON body, one row of --tokens tokens per request, --connections
connections), then runs the same ONNX files in this process with ONNX Runtime (--raw-threads threads,
batches of the server's max batch size). Rounds interleave raw and served measurements so that a
neighbour's load on the machine hits both. Prints, per serving variant:

    student served/raw, teacher served/raw, served student/teacher ratio vs raw ratio,
    mean executed batch (nv_inference_count / nv_inference_exec_count),
    where a request's time goes (Triton's queue / compute split, CPU µs per request by process).

Variants (--variant, repeatable) are ``instances=1,threads=2,delay_us=2000,spinning=off``; ``pytriton``
adds the previous path (PyTriton's proxy in front of the same ORT sessions) for comparison.
Nothing is asserted: the numbers are what was measured.

    python benchmarks/serving_efficiency.py                       # defaults: the demo's serving settings
    python benchmarks/serving_efficiency.py --variant threads=1,instances=2 --variant threads=2 --pytriton
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402

MODELS = ("student", "teacher")


@dataclass(frozen=True)
class Variant:
    """Serving knobs we own."""

    instances: int = 1
    threads: int = 0  # ORT intra-op threads per instance; 0: cores / instances
    delay_us: int = 2000
    spinning: str = "off"  # ORT worker threads busy-wait: off (our default), on, default (ORT's own: on)
    pytriton: bool = False
    noop: bool = False  # a Python-backend model that answers zeros: the server path's floor
    body: str = "json"  # wrk's request: KServe v2 JSON, or "binary" (the binary tensor extension, both ways)


    @classmethod
    def parse(cls, text: str) -> "Variant":
        if text in ("pytriton", "noop"):
            return cls(**{text: True})
        values = dict(item.split("=", 1) for item in text.split(",") if item)
        kwargs = {k: (v if k in ("spinning", "body") else int(v)) for k, v in values.items()}
        return cls(**kwargs)

    @property
    def label(self) -> str:
        if self.pytriton:
            return f"PyTriton proxy (old), delay {self.delay_us} µs"
        if self.noop:
            return f"no-op Python-backend model (server floor), delay {self.delay_us} µs"
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.instances)
        body = ", binary tensors" if self.body == "binary" else ""
        return f"{self.instances} inst x {threads} ORT thr, delay {self.delay_us} µs, spin {self.spinning}{body}"


@dataclass
class Served:
    rps: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    split_us: list[dict] = field(default_factory=list)
    cpu_us: list[dict] = field(default_factory=list)
    errors: int = 0


# ---- the pair and its repository -----------------------------------------------------------------
def export_demo_pair(work: Path) -> Path:
    """The quick demo pair (cached) exported with the demo's serving settings."""
    from exporters.pipeline import export_pair
    from loadtest.demopair.build import DemoSettings, build_or_reuse
    from loadtest.repository import TritonModelSettings

    pair = build_or_reuse(DemoSettings.quick(), progress=lambda message, fraction: None)
    repository = work / "exported"
    export_pair(pair.teacher_dir, pair.student_dir, repository, TritonModelSettings(max_batch_size=32), overwrite=True)
    return repository


def variant_repository(exported: Path, work: Path, variant: Variant) -> Path:
    """A copy of the exported repository with the variant's batcher delay and instance count in config.pbtxt."""
    from loadtest.repository import ModelRepository

    repository = work / f"repo-{abs(hash(variant))}"
    shutil.copytree(exported, repository)
    models = ModelRepository(repository)
    for name in MODELS:
        config = models.read_config(name)
        config.dynamic_batching.max_queue_delay_microseconds = variant.delay_us
        config.instance_group[0].count = variant.instances
        models.write_config(config)
    if variant.noop:
        make_noop(repository)
    return repository


NOOP_MODEL = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        output = json.loads(args["model_config"])["output"][0]
        self.name, self.width = output["name"], int(output["dims"][0])

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = len(request.inputs()[0].as_numpy())
            zeros = np.zeros((rows, self.width), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.name, zeros)]))
        return responses
"""


def make_noop(repository: Path) -> None:
    """Replace each ONNX model by a Python-backend model with the same config that answers zeros."""
    from loadtest.repository import ModelRepository

    models = ModelRepository(repository)
    for name in MODELS:
        config = models.read_config(name)
        config.platform, config.backend = "", "python"
        models.write_config(config)
        (models.model_dir(name) / "1" / "model.onnx").unlink()
        (models.model_dir(name) / "1" / "model.py").write_text(NOOP_MODEL)


def input_names(repository: Path, model: str) -> list[str]:
    from loadtest.repository import ModelRepository

    return [t.name for t in ModelRepository(repository).read_config(model).input]


def feeds(names: list[str], rows: int, tokens: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    fill = {"input_ids": rng.integers(5, 100, size=(rows, tokens), dtype=np.int64),
            "attention_mask": np.ones((rows, tokens), dtype=np.int64)}
    return {n: fill.get(n, np.zeros((rows, tokens), dtype=np.int64)) for n in names}


# ---- raw ONNX Runtime -----------------------------------------------------------------------------
def raw_samples_per_s(repository: Path, model: str, threads: int, batch: int, tokens: int, seconds: float,
                      spinning: bool | None = None) -> tuple[float, float]:
    """(samples/s, CPU µs per sample) of ONNX Runtime in this process (spinning None: ORT's default, on)."""
    import onnxruntime as ort

    from loadtest.repository import ModelRepository

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(ModelRepository(repository).model_file(model)), options, providers=["CPUExecutionProvider"])
    graph = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in feeds(input_names(repository, model), batch, tokens).items() if k in graph}
    for _ in range(3):
        session.run(None, feed)
    runs, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        session.run(None, feed)
        runs += 1
    return runs * batch / (time.perf_counter() - started), (time.process_time() - cpu_started) * 1e6 / (runs * batch)


# ---- servers --------------------------------------------------------------------------------------
class Server:
    """The embedded Triton (new path) or PyTriton binding the same ORT sessions (old path)."""

    def __init__(self, repository: Path, variant: Variant, work: Path):
        self.repository, self.variant, self.work = repository, variant, work
        self._server = None

    def __enter__(self):
        if self.variant.pytriton:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from _pytriton_path import PyTritonServer

            self._server = PyTritonServer(self.repository, intra_op_threads=self.variant.threads or None)
        else:
            from loadtest.serving import EmbeddedTriton, ServerPorts

            spinning = {"default": None, "on": True, "off": False}[self.variant.spinning]
            self._server = EmbeddedTriton(self.repository, ServerPorts(0, 0, 0), intra_op_threads=self.variant.threads or None,
                                          allow_spinning=spinning, log_file=self.work / "triton.log")
        self._server.start()
        return self

    def __exit__(self, *exc):
        self._server.stop()

    @property
    def http_url(self) -> str:
        return self._server.http_url

    @property
    def metrics_url(self) -> str:
        return self._server.metrics_url

    def processes(self) -> dict[str, list[psutil.Process]]:
        """tritonserver, and the stub processes running each model (PyTriton: its proxy in this process)."""
        pid = self._server.tritonserver_pid
        server = psutil.Process(pid)
        groups: dict[str, list[psutil.Process]] = {"tritonserver": [server]}
        for child in server.children(recursive=True):
            cmdline = " ".join(child.cmdline())
            model = next((m for m in MODELS if f"/{m}/" in cmdline or f"{m}_" in cmdline), "other")
            groups.setdefault(f"stub:{model}", []).append(child)
        if self.variant.pytriton:
            groups["pytriton proxy (this process)"] = [psutil.Process()]
        return groups


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def scrape(metrics_url: str, model: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success", "nv_inference_request_failure",
              "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
              "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
              "nv_inference_request_duration_us"}
    values = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(requests.get(metrics_url, timeout=10).text):
        if family.name in wanted:
            values[family.name] = sum(s.value for s in family.samples if s.labels.get("model") == model)
    return values


def wrk_body(repository: Path, model: str, tokens: int, body: str = "json") -> tuple[bytes, int | None]:
    """The request body, and for binary tensors the length of its JSON header (Inference-Header-Content-Length).

    Binary: tritonclient's own request builder (``generate_request_body``), inputs and the outputs as raw
    bytes after a JSON header, as tritonclient and our load generator send them by default.
    """
    data = feeds(input_names(repository, model), 1, tokens)
    if body != "binary":
        return json.dumps({"inputs": [{"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
                                      for n, a in data.items()]}).encode(), None
    import tritonclient.http as httpclient
    from loadtest.repository import ModelRepository

    inputs = []
    for name, array in data.items():
        tensor = httpclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(o.name, binary_data=True) for o in ModelRepository(repository).read_config(model).output]
    request, header_length = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return request, header_length


def run_wrk(url: str, body_file: Path, connections: int, seconds: float, header_length: int | None = None) -> tuple[float, int]:
    """(requests/s, non-2xx responses + socket errors)."""
    script = body_file.with_suffix(".lua")
    header = ("application/octet-stream" if header_length is not None else "application/json")
    extra = f'wrk.headers["Inference-Header-Content-Length"] = "{header_length}"\n' if header_length is not None else ""
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{header}"\n{extra}'
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    command = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:.0f}s", "-s", str(script), url]
    output = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket:
        errors += sum(int(g) for g in socket.groups())
    return rps, errors


def measure_served(server: Server, repository: Path, model: str, args, work: Path) -> tuple[float, float, dict, dict, int]:
    body = work / f"{model}-{server.variant.body}.body"
    content, header_length = wrk_body(repository, model, args.tokens, server.variant.body)
    body.write_bytes(content)
    url = f"{server.http_url}/v2/models/{model}/infer"
    run_wrk(url, body, args.connections, args.warmup, header_length)  # warm-up: sessions, connections, batcher
    groups = server.processes()
    before_metrics = scrape(server.metrics_url, model)
    before_cpu = {name: cpu_seconds(procs) for name, procs in groups.items()}
    before_children = resource_children()
    rps, errors = run_wrk(url, body, args.connections, args.seconds, header_length)  # its CPU: RUSAGE_CHILDREN delta
    after_children = resource_children()
    after_cpu = {name: cpu_seconds(procs) for name, procs in groups.items()}
    after = scrape(server.metrics_url, model)
    delta = {k: after[k] - before_metrics[k] for k in after}
    requests_done = max(delta["nv_inference_request_success"], 1.0)
    batch = delta["nv_inference_count"] / max(delta["nv_inference_exec_count"], 1.0)
    split = {
        "queue": delta["nv_inference_queue_duration_us"] / requests_done,
        "compute_input": delta["nv_inference_compute_input_duration_us"] / requests_done,
        "compute_infer": delta["nv_inference_compute_infer_duration_us"] / requests_done,
        "compute_output": delta["nv_inference_compute_output_duration_us"] / requests_done,
        "request": delta["nv_inference_request_duration_us"] / requests_done,
        "infer_per_batch": delta["nv_inference_compute_infer_duration_us"] / max(delta["nv_inference_exec_count"], 1.0),
    }
    cpu = {name: (after_cpu[name] - before_cpu[name]) * 1e6 / requests_done for name in groups}
    cpu["wrk (client)"] = (after_children - before_children) * 1e6 / requests_done
    errors += int(delta["nv_inference_request_failure"])
    return rps, batch, split, cpu, errors


def resource_children() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- main -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", type=Variant.parse, default=[],
                        help="serving knobs, e.g. instances=2,threads=1,delay_us=2000,spinning=off (repeatable)")
    parser.add_argument("--pytriton", action="store_true", help="also measure the old PyTriton proxy path")
    parser.add_argument("--noop", action="store_true", help="also measure a no-op Python-backend model (the floor)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--raw-threads", type=int, default=2)
    parser.add_argument("--raw-batch", type=int, default=32, help="ONNX Runtime batch (the server's max batch size)")
    parser.add_argument("--raw-seconds", type=float, default=5.0)
    parser.add_argument("--repository", type=Path, help="an exported teacher/student repository (default: the quick demo pair)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    variants = args.variant or [Variant()]
    if args.pytriton:
        variants.append(Variant(pytriton=True, delay_us=variants[0].delay_us))
    if args.noop:
        variants.append(Variant(noop=True, delay_us=variants[0].delay_us))
    if not shutil.which("wrk"):
        sys.exit("wrk not found (Debian: apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="serving-efficiency-"))
    loads = [os.getloadavg()[0]]
    try:
        exported = args.repository or export_demo_pair(work)
        repositories = {v: variant_repository(exported, work, v) for v in variants}
        reference = next(r for v, r in repositories.items() if not v.noop)
        raw: dict[str, list[float]] = {m: [] for m in MODELS}
        raw_cpu: dict[str, list[float]] = {m: [] for m in MODELS}
        served = {v: {m: Served() for m in MODELS} for v in variants}
        for round_index in range(args.rounds):
            for model in MODELS:
                # ORT's default (spinning) and without spinning: the better of the two is the reference.
                measured = [raw_samples_per_s(reference, model, args.raw_threads, args.raw_batch, args.tokens, args.raw_seconds, spin)
                            for spin in (None, False)]
                (rate, cpu) = max(measured)
                raw[model].append(rate)
                raw_cpu[model].append(min(c for _, c in measured))
                print(f"round {round_index + 1}: raw {model} " + " / ".join(
                    f"{label} {r:,.0f} samples/s ({c:,.0f} CPU µs/sample)" for label, (r, c) in zip(("spinning", "no spinning"), measured))
                      + f" (load {os.getloadavg()[0]:.1f})", flush=True)
            for variant in variants:
                with Server(repositories[variant], variant, work) as server:
                    for model in MODELS:
                        rps, batch, split, cpu, errors = measure_served(server, repositories[variant], model, args, work)
                        entry = served[variant][model]
                        entry.rps.append(rps)
                        entry.batch.append(batch)
                        entry.split_us.append(split)
                        entry.cpu_us.append(cpu)
                        entry.errors += errors
                        loads.append(os.getloadavg()[0])
                        print(f"round {round_index + 1}: {variant.label}: {model} {rps:,.0f} req/s, mean batch {batch:.1f}, "
                              f"errors {errors} (load {loads[-1]:.1f})", flush=True)
        report(args, variants, raw, raw_cpu, served, loads)
        if args.json:
            args.json.write_text(json.dumps({
                "raw": raw, "raw_cpu_us_per_sample": raw_cpu, "loadavg": loads,
                "served": {v.label: {m: vars(served[v][m]) for m in MODELS} for v in variants},
            }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, variants, raw, raw_cpu, served, loads) -> None:
    mean = statistics.fmean
    raw_s, raw_t = mean(raw["student"]), mean(raw["teacher"])
    print()
    print(f"machine: {os.cpu_count()} cores, load average during the run {min(loads):.1f}-{max(loads):.1f} "
          f"(1-min; other processes share these cores)")
    print(f"{args.tokens} tokens, {args.connections} connections (wrk, KServe JSON), {args.seconds:.0f} s x {args.rounds} rounds; "
          f"raw = ONNX Runtime in-process, {args.raw_threads} threads, batch {args.raw_batch}, the better of spinning on/off")
    print(f"raw: student {raw_s:,.0f} samples/s ({' / '.join(f'{x:,.0f}' for x in raw['student'])}), "
          f"teacher {raw_t:,.0f} ({' / '.join(f'{x:,.0f}' for x in raw['teacher'])}), student/teacher {raw_s / raw_t:.2f}x")
    cpu_s, cpu_t = mean(raw_cpu["student"]), mean(raw_cpu["teacher"])
    print(f"raw CPU per sample: student {cpu_s:,.0f} µs, teacher {cpu_t:,.0f} µs (ratio {cpu_t / cpu_s:.2f}x)")
    for variant in variants:
        s, t = served[variant]["student"], served[variant]["teacher"]
        ss, st = mean(s.rps), mean(t.rps)
        ratio = ss / st
        print(f"\n[{variant.label}]")
        print(f"  student {ss:,.0f} req/s ({' / '.join(f'{x:,.0f}' for x in s.rps)}) = {ss / raw_s:.2f}x raw; "
              f"teacher {st:,.0f} ({' / '.join(f'{x:,.0f}' for x in t.rps)}) = {st / raw_t:.2f}x raw")
        print(f"  served student/teacher {ratio:.2f}x vs raw {raw_s / raw_t:.2f}x: {100 * (ratio / (raw_s / raw_t) - 1):+.0f} %")
        # CPU-bound estimate (contention-robust): a saturated machine's req/s = its CPU / CPU per request, so
        # served/raw ~ raw CPU per sample / (server + client CPU per request).
        est = {}
        for name, entry in (("student", s), ("teacher", t)):
            total = mean(sum(d.values()) for d in entry.cpu_us)
            est[name] = mean(raw_cpu[name]) / total
        print(f"  CPU-bound estimate of served/raw: student {est['student']:.2f}x, teacher {est['teacher']:.2f}x; "
              f"student/teacher {est['student'] / est['teacher'] * (cpu_t / cpu_s):.2f}x vs raw {cpu_t / cpu_s:.2f}x")
        for name, entry in (("student", s), ("teacher", t)):
            split = {k: mean(d[k] for d in entry.split_us) for k in entry.split_us[0]}
            cpu = {k: mean(d.get(k, 0.0) for d in entry.cpu_us) for k in entry.cpu_us[0]}
            print(f"  {name}: mean batch {mean(entry.batch):.1f}, errors {entry.errors}; per request µs: "
                  + ", ".join(f"{k} {v:,.0f}" for k, v in split.items()))
            server_cpu = sum(v for k, v in cpu.items() if k != "wrk (client)")
            raw_per_sample = mean(raw_cpu[name])
            print(f"  {name}: CPU µs per request: " + ", ".join(f"{k} {v:,.0f}" for k, v in cpu.items())
                  + f"; server total {server_cpu:,.0f} = {server_cpu / raw_per_sample:.2f}x raw ORT's {raw_per_sample:,.0f}"
                  + f" (raw/served CPU efficiency {raw_per_sample / server_cpu:.2f})")


if __name__ == "__main__":
    main()
