"""The gRPC loop thread (grpc.aio on a native thread, what TritonClient's gRPC calls and GrpcStreamClient's
streams use), in a process of its own.

The cases (tests/_grpc_loop_cases.py, tests/_grpc_stream_cases.py) need gevent's monkey-patching, as a
Locust load process has it; this test process must stay unpatched (the library side and the other tests
never import Locust or gevent), so they run in a child pytest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("cases, count", [("_grpc_loop_cases.py", 5), ("_grpc_stream_cases.py", 4)])
def test_grpc_loop_cases_in_a_gevent_process(cases, count):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", str(HERE / cases)],
        capture_output=True, text=True, timeout=300, cwd=HERE.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(rf"^{count} passed", done.stdout, re.M), done.stdout[-2000:]  # every case ran
