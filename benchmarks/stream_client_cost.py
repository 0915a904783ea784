"""Client cost of the streaming users: CPU seconds per request and per streamed token, ours against bare Locust.

The unary benchmark (``client_cost.py``) for generative load. One run, rounds interleaved, against a no-op
decoupled model on the embedded Triton (a standard Python-backend ``model.py`` that sends ``--tokens``
responses of one token each, back to back, then Triton's final flag), each client with the same users,
prompt and duration:

- **bare Locust, gRPC**: a plain Locust ``User`` streaming through ``tritonclient.grpc`` the way a Locust
  user would write it (Locust's gRPC recipe: ``grpc.experimental.gevent.init_gevent()``; one
  ``start_stream`` per user, ``async_stream_infer(..., enable_empty_final_response=True)`` per request, the
  callback's responses counted until the final one) and one ``events.request`` per request (E2E, tokens);
- **ours, gRPC**: ``scenarios/llm.py`` with ``--api triton-grpc`` (the gRPC loop thread), records and
  the client metrics endpoint on, exactly as a user runs it;
- **bare Locust, SSE**: ``FastHttpUser`` POSTing the same JSON body to ``generate_stream`` and reading it
  with Locust's own ``client.iter_lines``, ``json.loads`` of every ``data:`` event, tokens counted (Locust
  fires its one request event when the headers arrive);
- **ours, SSE**: ``scenarios/llm.py`` with ``--api triton-generate``, records and metrics on;
- optionally (``--clients ...,bare-openai,openai``) the same SSE pair against an OpenAI-compatible server,
  ``transformers serve`` with a tiny random GPT-2 whose end-of-sequence token is suppressed (so every
  request streams exactly ``--tokens`` tokens): ``/v1/completions`` with ``stream: true``, bare
  ``FastHttpUser`` against ours with ``--api openai-completions``. That server runs a real model on
  the same cores, so its request rate is far lower; the figures per request and per token still compare.

The bare users keep no per-chunk timestamps, write no records and export no metrics: that, and the
transport, is what ours costs on top. A client's cost is its process's user+system CPU seconds over the
steady window divided by the requests Locust counted in it, and by those requests' tokens (every request
asks for ``--tokens`` and the model always sends that many; a run with failures says so). Nothing is
asserted: the figures are what this machine measured while it ran.

    python benchmarks/stream_client_cost.py                    # 2 rounds of 15 s, 16 users, 16 tokens
    python benchmarks/stream_client_cost.py --clients bare-grpc,grpc --rounds 1 --profile /tmp/prof
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from client_cost import Measurement, client_arguments, round_ratios, run_locust  # noqa: E402

MODEL = "noop_stream"
PROMPT = "the quick brown fox jumps over the lazy dog"

MODEL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """No-op decoupled model: max_tokens responses of one token each, at once, then the final flag."""

    def execute(self, requests):
        for request in requests:
            max_tokens = pb_utils.get_input_tensor_by_name(request, "max_tokens")
            n = int(max_tokens.as_numpy().reshape(-1)[0]) if max_tokens is not None else 16
            sender = request.get_response_sender()
            for _ in range(n):
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("text_output", np.array([b" tok"], dtype=np.object_)),
                    pb_utils.Tensor("num_output_tokens", np.array([1], dtype=np.int32)),
                    pb_utils.Tensor("num_input_tokens", np.array([9], dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

CONFIG = f'''name: "{MODEL}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true }},
  {{ name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }},
  {{ name: "sampling_parameters" data_type: TYPE_STRING dims: [ 1 ] optional: true }}
]
output [
  {{ name: "text_output" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "num_output_tokens" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "num_input_tokens" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
'''

BARE_GRPC = '''
"""Bare Locust over Triton gRPC streaming: tritonclient's stream, one request event per request."""
import time

import grpc.experimental.gevent as grpc_gevent
import numpy as np
import tritonclient.grpc as grpcclient
from gevent.queue import Queue
from locust import User, constant, task

grpc_gevent.init_gevent()  # Locust's gRPC recipe: after gevent's patching, before any channel

MODEL, PROMPT, TOKENS = {model!r}, {prompt!r}, {tokens}


class BareTritonStreamUser(User):
    wait_time = constant(0)

    def on_start(self):
        self.client = grpcclient.InferenceServerClient(self.host.split("://", 1)[-1])
        self.responses = Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=np.object_))
        max_tokens = grpcclient.InferInput("max_tokens", [1], "INT32")
        max_tokens.set_data_from_numpy(np.array([TOKENS], dtype=np.int32))
        stream = grpcclient.InferInput("stream", [1], "BOOL")
        stream.set_data_from_numpy(np.array([True]))
        self.inputs = [text, max_tokens, stream]

    def on_stop(self):
        self.client.stop_stream(cancel_requests=True)
        self.client.close()

    @task
    def generate(self):
        start, started = time.time(), time.perf_counter()
        self.client.async_stream_infer(MODEL, self.inputs, enable_empty_final_response=True)
        tokens, exception = 0, None
        while True:
            result, error = self.responses.get()
            if error is not None:
                exception = error
                break
            response = result.get_response()
            if response.outputs:
                tokens += int(result.as_numpy("num_output_tokens")[0])
            if response.parameters["triton_final_response"].bool_param:
                break
        self.environment.events.request.fire(
            request_type="grpc", name=MODEL, response_time=(time.perf_counter() - started) * 1000.0,
            response_length=tokens, exception=exception, context={{}}, start_time=start)
'''

BARE_SSE = '''
"""Bare Locust over Server-Sent Events: FastHttpUser, Locust's iter_lines, json.loads per event."""
import json

from locust import FastHttpUser, constant, task

PATH, BODY = {path!r}, {body!r}
HEADERS = {{"Content-Type": "application/json", "Accept": "text/event-stream"}}


class BareSSEUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def generate(self):
        tokens = 0
        for line in self.client.iter_lines(PATH, method="POST", data=BODY, headers=HEADERS, name="{model}"):
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                event = json.loads(line[5:])
                tokens += int(event.get("num_output_tokens", 1))
'''

LABELS = {
    "bare-grpc": "bare Locust User + tritonclient gRPC stream",
    "grpc": "loadtest LLMStreamUser, triton-grpc",
    "bare-sse": "bare Locust FastHttpUser, generate_stream SSE",
    "sse": "loadtest LLMStreamUser, triton-generate (SSE)",
    "bare-openai": "bare Locust FastHttpUser, OpenAI completions SSE",
    "openai": "loadtest LLMStreamUser, openai-completions (SSE)",
}
BASELINE = {"grpc": "bare-grpc", "sse": "bare-sse", "openai": "bare-openai"}
API = {"grpc": "triton-grpc", "sse": "triton-generate", "openai": "openai-completions"}


def build_repository(root: Path) -> Path:
    (root / MODEL / "1").mkdir(parents=True)
    (root / MODEL / "1" / "model.py").write_text(MODEL_PY)
    (root / MODEL / "config.pbtxt").write_text(CONFIG)
    return root


def versions() -> str:
    names = ("locust", "tritonclient", "grpcio", "gevent", "geventhttpclient", "nvidia-pytriton")
    return ", ".join(f"{n} {version(n)}" for n in names) + f", Python {platform.python_version()}"


def main() -> None:
    parser = client_arguments(__doc__, "bare-grpc,grpc,bare-sse,sse", "Locust users",
                              "output tokens per request (one per response)")
    args = parser.parse_args()

    from loadtest.generative import protocols as wire

    work = Path(tempfile.mkdtemp(prefix="stream-client-cost-"))
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    openai_server = start_openai_server(work) if any(c.endswith("openai") for c in clients) else None
    models = {"grpc": MODEL, "sse": MODEL, "openai": str(openai_server.model) if openai_server else ""}
    body = json.dumps(wire.triton_generate_body(PROMPT, args.tokens, stream=True, ignore_eos=False))
    files = {
        "bare-grpc": BARE_GRPC.format(model=MODEL, prompt=PROMPT, tokens=args.tokens),
        "bare-sse": BARE_SSE.format(path=wire.triton_generate_path(MODEL, True), body=body, model=MODEL),
    }
    if openai_server is not None:
        body = json.dumps(wire.openai_body(wire.OPENAI_COMPLETIONS, models["openai"], PROMPT, None, args.tokens,
                                           stream=True, ignore_eos=False))  # fmt: skip
        files["bare-openai"] = BARE_SSE.format(path=wire.openai_path(wire.OPENAI_COMPLETIONS), body=body, model="tiny")
    for name, text in files.items():
        (work / f"{name}.py").write_text(text)
    (work / "prompts.jsonl").write_text(json.dumps({"text": PROMPT}) + "\n")
    llm = ROOT / "scenarios" / "llm.py"
    results: list[Measurement] = []
    try:
        run_all(args, clients, work, llm, models, openai_server, results)
    finally:
        if openai_server is not None:
            openai_server.stop()
    report(args, clients, results)
    shutil.rmtree(work, ignore_errors=True)


def start_openai_server(work: Path):
    """``transformers serve`` (the tests' helper) with a tiny GPT-2 that never ends early, loaded and warm."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _llm_fixtures import make_tiny_causal_lm
    from _llm_server import TransformersServe

    model = make_tiny_causal_lm(work / "tiny-gpt2")
    server = TransformersServe(work)
    server.load(model)
    server.model = model
    return server


def run_all(args, clients, work, llm, models, openai_server, results) -> None:
    from loadtest.serving import EmbeddedTriton
    from loadtest.serving.ports import free_port

    with EmbeddedTriton(build_repository(work / "repository"), pick_free_ports=True, log_file=work / "triton.log") as server:
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; no-op decoupled model on the embedded Triton; "
              f"{args.connections} users, {args.duration} s per client, {args.tokens} tokens per request "
              f"(one per response), {args.rounds} interleaved round(s); {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}\n{versions()}", flush=True)
        for rnd in range(1, args.rounds + 1):
            for client in clients:
                profile = args.profile if (args.profile and rnd == 1) else None
                if profile:
                    profile.mkdir(parents=True, exist_ok=True)
                kind = client.removeprefix("bare-")
                host = {"grpc": server.grpc_url, "sse": server.http_url}.get(kind) or openai_server.url
                if client.startswith("bare-"):
                    m = run_locust(client, rnd, work / f"{client}.py", host, [], args, work, profile)
                else:
                    extra = ["--api", API[kind], "--models", models[kind], "--dataset", str(work / "prompts.jsonl"),
                             "--output-lengths", f"fixed:{args.tokens}", "--warmup-requests", "0",
                             "--records-dir", str(work / "results"), "--triton-metrics-url", "none",
                             "--metrics-port", str(free_port("127.0.0.1"))]  # fmt: skip
                    m = run_locust(client, rnd, llm, host, extra, args, work, profile)
                results.append(m)
                print(f"  round {rnd} {client:>9}: {m.rps:7,.0f} req/s, {m.cpu_us_per_request:6.0f} µs CPU/request, "
                      f"{m.cpu_us_per_request / args.tokens:5.1f} µs CPU/token"
                      f"{f', {m.failures} failures' if m.failures else ''}; load average {os.getloadavg()[0]:.1f}",
                      flush=True)  # fmt: skip


def report(args, clients, results) -> None:
    print()
    print("| client | req/s | tokens/s | client CPU per request | per token | vs bare Locust, same protocol |")
    print("|---|---|---|---|---|---|")
    for client in clients:
        mine = [m for m in results if m.client == client]
        ratios = round_ratios(results, client, BASELINE.get(client, client))
        ratio = " / ".join(f"{r:.2f}×" for r in ratios) if ratios else "—"
        print(f"| {LABELS.get(client, client)} | {' / '.join(f'{m.rps:,.0f}' for m in mine)} | "
              f"{' / '.join(f'{m.rps * args.tokens:,.0f}' for m in mine)} | "
              f"{' / '.join(f'{m.cpu_us_per_request:.0f}' for m in mine)} µs | "
              f"{' / '.join(f'{m.cpu_us_per_request / args.tokens:.1f}' for m in mine)} µs | {ratio} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if args.profile:
        print(f"py-spy profiles in {args.profile}")


if __name__ == "__main__":
    main()
