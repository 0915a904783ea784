"""Is it the host or the served path that moves? Raw ONNX Runtime and the served model, alternating, over minutes.

A capacity figure that does not repeat can come from the machine (a neighbour, the hypervisor, frequency)
or from the serving path itself (how tritonserver's threads, the Python-backend stub and ONNX Runtime's
threads share the cores at saturation). This alternates, on one embedded Triton, a fixed raw workload
(the model in this process, 1 ONNX Runtime thread, batch 1, 2 s) with a saturating wrk run against the
served model (--connections, 5 s), and measures who else used the CPU during each (loadtest.load.host_cpu).
If the raw figure holds still while the served one moves, the spread is the serving path's, not the host's.
Nothing is asserted: it prints what it measured and the spread of each series.

    python benchmarks/served_drift.py --repository model_repository --model student --rounds 14
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="an exported repository")
    parser.add_argument("--model", default="student")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request (the demo's load: 128)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=14)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort

    from loadtest.load.host_cpu import HostCpuMonitor
    from loadtest.serving import EmbeddedTriton, ServerPorts
    from serving_efficiency import feeds, input_names, run_wrk, wrk_body

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(args.repository / args.model / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    feed = feeds(input_names(args.repository, args.model), 1, args.tokens)
    work = Path(tempfile.mkdtemp(prefix="served-drift-"))
    server = EmbeddedTriton(args.repository, ServerPorts(0, 0, 0), log_file=work / "triton.log")
    server.start()
    raw_rates, served_rates = [], []
    try:
        monitor = HostCpuMonitor("127.0.0.1", int(server.http_url.rsplit(":", 1)[1]))
        content, header_length = wrk_body(args.repository, args.model, args.tokens)
        body = work / "body"
        body.write_bytes(content)
        url = f"{server.http_url}/v2/models/{args.model}/infer"
        run_wrk(url, body, args.connections, 2, header_length)  # warm-up
        started = time.monotonic()
        for _ in range(args.rounds):
            monitor.begin_window("raw")
            count, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 2.0:
                session.run(None, feed)
                count += 1
            raw_rates.append(count / (time.perf_counter() - t0))
            raw_host = monitor.end_window("raw")
            time.sleep(1)
            monitor.begin_window("served")
            rps, errors = run_wrk(url, body, args.connections, 5, header_length)
            served_host = monitor.end_window("served")
            served_rates.append(rps)
            print(f"{time.monotonic() - started:5.0f} s  raw {raw_rates[-1]:7.0f}/s (others {raw_host.others_cores:.2f} cores)"
                  f"   served {rps:7.0f} req/s, errors {errors} ({served_host.describe()})", flush=True)
            time.sleep(1)
    finally:
        server.stop()

    def spread(xs: list[float]) -> str:
        mean = statistics.fmean(xs)
        return f"mean {mean:,.0f}, {100 * (min(xs) / mean - 1):+.1f} % / {100 * (max(xs) / mean - 1):+.1f} %"

    print(f"\nraw ONNX Runtime (1 thread, batch 1): {spread(raw_rates)}")
    print(f"served ({args.connections} connections, wrk): {spread(served_rates)}")


if __name__ == "__main__":
    main()
