"""gRPC floor: CPU per request of each way to make gRPC calls from gevent, without Locust or loadtest's records.

What a gevent-based load generator cannot go below over gRPC: 16 greenlets send the same prepared
``ModelInferRequest`` to a no-op model on the embedded Triton in a loop, after
``grpc.experimental.gevent.init_gevent()``, as the load generator runs, by three paths side by side:

- ``blocking call``: tritonclient's stub (``grpc`` sync API), each call waiting on its completion queue
  through gevent's thread pool;
- ``future().result()``: the same stub's ``.future()`` API (grpc's channel-spin greenlet + the thread pool);
- ``aio loop thread``: ``loadtest.load.grpc_loop`` (what TritonUser uses): ``grpc.aio`` on one native
  thread, raw request bytes in, response bytes out, parsed into a ``ModelInferResponse`` in the greenlet,
  wake-ups batched both ways.

CPU is this process's user+system time, all threads (the server runs in child processes); two
interleaved rounds. Compare with bare Locust's CPU per request over HTTP in benchmarks/client_cost.py.

    python benchmarks/grpc_floor.py --requests 300
"""

from gevent import monkey

monkey.patch_all()

import grpc.experimental.gevent as grpc_gevent  # noqa: E402

grpc_gevent.init_gevent()

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="per greenlet per measurement")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    import tritonclient.grpc as grpcclient
    from client_cost import MODEL, build_noop_repository
    from tritonclient.grpc import service_pb2
    from tritonclient.grpc._utils import _get_inference_request

    from loadtest.load.grpc_loop import grpc_loop
    from loadtest.serving import EmbeddedTriton, ServerPorts

    repo, _ = build_noop_repository(Path(tempfile.mkdtemp(prefix="grpc-floor-")) / "repository", 16)
    with EmbeddedTriton(repo, ServerPorts(0, 0, 0)) as server:
        address = server.grpc_url.split("//", 1)[1]
        clients = [grpcclient.InferenceServerClient(address) for _ in range(args.connections)]
        inputs = []
        for name in ("input_ids", "attention_mask"):
            tensor = grpcclient.InferInput(name, [1, 16], "INT64")
            tensor.set_data_from_numpy(np.ones((1, 16), np.int64))
            inputs.append(tensor)
        request = _get_inference_request(
            model_name=MODEL, inputs=inputs, model_version="", request_id="",
            outputs=[grpcclient.InferRequestedOutput("logits")], sequence_id=0, sequence_start=False,
            sequence_end=False, priority=0, timeout=None, parameters=None,
        )

        raw = request.SerializeToString()
        loop = grpc_loop()
        methods = [loop.unary_channel(address, "/inference.GRPCInferenceService/ModelInfer")
                   for _ in range(args.connections)]  # fmt: skip
        parse = service_pb2.ModelInferResponse.FromString

        def blocking(client, n):
            for _ in range(n):
                client._client_stub.ModelInfer(request=request, timeout=10)

        def future(client, n):
            for _ in range(n):
                client._client_stub.ModelInfer.future(request=request, timeout=10).result()

        def loop_thread(method, n):
            for _ in range(n):
                parse(method(raw, (), 10))

        paths = (("blocking call", blocking, clients), ("future().result()", future, clients),
                 ("aio loop thread", loop_thread, methods))  # fmt: skip
        for rnd in (1, 2):
            for name, fn, targets in paths:
                before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                gevent.joinall([gevent.spawn(fn, target, args.requests) for target in targets])
                after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
                total = args.requests * len(clients)
                cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                print(f"round {rnd} {name:>18}: {total / wall:7,.0f} req/s, {cpu / total * 1e6:5.0f} µs CPU/request",
                      flush=True)
        for client in clients:
            client.close()
        for method in methods:
            method.close()


if __name__ == "__main__":
    main()
