"""Load generation against Triton: payloads, raw records, client metrics, Locust users and shapes.

Importing this package imports nothing heavy. The Locust-side names (``TritonUser``, ``ABTritonUser``,
``OpenLoopUser``, the LLM users ``LLMUser``, ``ABLLMUser``, ``LLMOpenLoopUser``, ``StepShape``, ``SpikeShape``, ``SoakShape``, ``RatePlanShape``) load on first access,
and with them Locust and gevent's monkey-patching: only a locustfile should touch them. The rest
(``payloads``, ``records``, ``client_metrics``, ``rundir``, ``runner``, ``summary``) never imports Locust.
"""

from __future__ import annotations

import importlib

_LOCUST_NAMES = {
    "TritonUser": "loadtest.load.users",
    "ABTritonUser": "loadtest.load.users",
    "OpenLoopUser": "loadtest.load.users",
    "LLMUser": "loadtest.load.stream_users",
    "ABLLMUser": "loadtest.load.stream_users",
    "LLMOpenLoopUser": "loadtest.load.stream_users",
    "StepShape": "loadtest.load.shapes",
    "SpikeShape": "loadtest.load.shapes",
    "SoakShape": "loadtest.load.shapes",
    "RatePlanShape": "loadtest.load.shapes",
    "StagePlanShape": "loadtest.load.shapes",
}

__all__ = sorted(_LOCUST_NAMES)


def __getattr__(name: str):
    module = _LOCUST_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'loadtest.load' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
