"""Shared by the gevent-process gRPC cases (tests/_grpc_loop_cases.py, tests/_grpc_stream_cases.py).

A real ``grpc.aio`` server of Triton's inference service runs on the load generator's own gRPC loop thread
(so the cases need no second event loop), and ``RecordedEvents`` stands in for Locust's request event hook
to collect what a client fired. Import after gevent's monkey-patching, as the cases do.
"""

from __future__ import annotations

from collections.abc import Iterator

SERVICE = "inference.GRPCInferenceService"


def serve_on_loop(handlers: dict) -> Iterator[int]:
    """Serve ``{method name: grpc rpc handler}`` on 127.0.0.1 until the generator is closed; yields the port."""
    import grpc
    import grpc.aio

    from loadtest.load.grpc_loop import grpc_loop

    loop = grpc_loop()

    async def start():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = loop.run(start)
    try:
        yield port
    finally:
        loop.run(server.stop, None)


class RecordedEvents:
    """The ``fire(**kwargs)`` of Locust's request event: every call kept, records readable."""

    def __init__(self):
        self.fired = []

    def fire(self, **kwargs):
        self.fired.append(kwargs)

    def records(self):
        return [f["context"]["loadtest_record"] for f in self.fired]
