"""gRPC unary calls for gevent greenlets, made by ``grpc.aio`` on one native thread.

Why: under gevent, grpcio's blocking call waits on its completion queue through gevent's thread pool (a
native-thread hand-off, a new async watcher and a queue round trip per call); that alone cost more CPU per
request than bare Locust's whole HTTP request. Here one real OS thread runs an asyncio loop that owns
``grpc.aio`` channels; greenlets hand it pre-serialised requests through a queue (one loop wake-up per
batch of submissions) and are woken through a single gevent async watcher (one hub wake-up per batch of
answers). Streaming calls (Triton's ``ModelStreamInfer``) work the same way, one hand-off per response,
each stamped with its arrival time on the loop thread. grpc.aio's own completion-queue poller is a native
thread too, so nothing of gRPC's runs in or blocks the gevent hub, and ``init_gevent`` stays in force for
the rest of the process (tritonclient's synchronous client: readiness, metadata).

Under gevent's monkey-patching ``threading.Thread`` starts a greenlet, which would leave grpc.aio's
poller (a loop that blocks in C) stuck on a hub nobody runs; while the loop's thread initialises
grpc.aio, gRPC's module sees a ``threading`` whose ``Thread`` is a real OS thread.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections import deque

_LOOP: GrpcLoop | None = None
_LOOP_GUARD = threading.Lock()


def grpc_loop() -> GrpcLoop:
    """The process's gRPC loop thread (started on first use)."""
    global _LOOP
    with _LOOP_GUARD:
        if _LOOP is None:
            _LOOP = GrpcLoop()
        elif _LOOP.pid != os.getpid():  # a fork copies no threads: the parent's loop thread is not here
            raise RuntimeError("loadtest: the gRPC loop thread was started before this process was forked; "
                               "start gRPC clients in each load process after forking")  # fmt: skip
        return _LOOP


def _original(module: str, name: str):
    from gevent import monkey

    return monkey.get_original(module, name)


class _NativeThread:
    """``threading.Thread``'s interface over a real OS thread (gevent's patched one starts a greenlet)."""

    def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):
        self._target, self._args, self._kwargs = target, args, kwargs or {}
        self.daemon = True

    def start(self) -> None:
        _original("_thread", "start_new_thread")(self._target, self._args, self._kwargs)

    def join(self, timeout=None) -> None:  # grpc's poller is a daemon that ends with its queue
        return None

    def is_alive(self) -> bool:
        return True


class _NativeThreading:
    """The ``threading`` module, except that ``Thread`` is a real OS thread."""

    Thread = _NativeThread

    def __getattr__(self, name):
        return getattr(threading, name)


class _NativeSocket:
    """The ``socket`` module, except that ``socketpair`` makes plain sockets (gevent's cost more per wake-up)."""

    def __getattr__(self, name):
        import socket

        return getattr(socket, name)

    @staticmethod
    def socketpair():
        import _socket

        plain = _original("socket", "socket")  # the stdlib's socketpair() would wrap them in gevent's class
        return tuple(plain(end.family, end.type, end.proto, end.detach()) for end in _socket.socketpair())


class GrpcLoop:
    """One asyncio loop on a real OS thread, owning grpc.aio channels, serving greenlets."""

    def __init__(self):
        import gevent

        self.pid = os.getpid()
        self._hub = gevent.get_hub()
        self._answers: deque = deque()  # (waiter, ok, value), appended by the loop thread
        self._streams_to_wake: list = []  # BidiStreams given responses in this batch (hub only)
        self._watcher = self._hub.loop.async_()
        self._watcher.start(self._wake_waiters)
        self._submissions: deque = deque()  # (channel key or callable, args, waiter), appended by greenlets
        self._submit_scheduled = False
        self._channels: dict = {}
        started = _original("threading", "Event")()  # a real event: the loop thread is not a greenlet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_error: BaseException | None = None
        self._stopped = _original("threading", "Event")()
        _original("_thread", "start_new_thread")(self._run, (started,))
        started.wait()
        if self._start_error is not None:
            raise self._start_error
        atexit.register(self._stop_at_exit)

    # -- loop thread ---------------------------------------------------------------------------------
    def _run(self, started) -> None:
        try:
            from asyncio import selector_events

            selector = _original("selectors", "DefaultSelector")()  # gevent's would wait on a hub
            saved, selector_events.socket = selector_events.socket, _NativeSocket()  # its wake-up pipe
            try:
                loop = asyncio.SelectorEventLoop(selector)
            finally:
                selector_events.socket = saved
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._init_grpc_aio()
        except BaseException as exc:  # reported to the constructor's caller
            self._start_error = exc
            self._stopped.set()
            started.set()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            self._stopped.set()

    def _stop_at_exit(self) -> None:
        """Stop the loop before the interpreter tears down the modules its thread still runs in."""
        if not self._stopped.is_set():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._stopped.wait(2.0)

    def _init_grpc_aio(self) -> None:
        """Start grpc.aio's completion-queue poller on this loop, as a real OS thread."""
        from grpc._cython import cygrpc

        saved = cygrpc.threading, cygrpc.socket
        cygrpc.threading, cygrpc.socket = _NativeThreading(), _NativeSocket()
        try:
            cygrpc.init_grpc_aio()
        finally:
            cygrpc.threading, cygrpc.socket = saved

    def _drain_submissions(self) -> None:
        self._submit_scheduled = False
        submissions = self._submissions
        while submissions:
            start, args, waiter = submissions.popleft()
            try:
                start(waiter, *args)
            except BaseException as exc:  # a call that could not even start answers with its error
                self._answer(waiter, False, exc)

    def _answer(self, waiter, ok: bool, value) -> None:
        self._answers.append((waiter, ok, value))
        self._watcher.send()

    # -- gevent side ---------------------------------------------------------------------------------
    def _wake_waiters(self) -> None:
        answers, streams = self._answers, self._streams_to_wake
        while answers:
            waiter, ok, value = answers.popleft()
            if ok:
                waiter.switch(value)
            else:
                waiter.throw(value)
        while streams:  # after the whole batch: a stream's greenlet takes all its responses in one turn
            streams.pop().wake()

    def post(self, start, args, receiver) -> None:
        """Run ``start(receiver, *args)`` on the loop thread, without waiting; an error it raises goes to
        ``receiver.throw`` on the hub (a gevent ``Waiter`` or a :class:`BidiStream`)."""
        self._submissions.append((start, args, receiver))
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self._loop.call_soon_threadsafe(self._drain_submissions)

    def _submit(self, start, args):
        """Run ``start(waiter, *args)`` on the loop thread and wait (this greenlet only) for its answer."""
        from gevent._waiter import Waiter

        waiter = Waiter(self._hub)
        self.post(start, args, waiter)
        return waiter.get()

    def run(self, function, *args):
        """``function(*args)`` called on the loop thread (awaited if it is a coroutine); its result here."""

        def start(waiter, *args):
            result = function(*args)
            if asyncio.iscoroutine(result):
                task = self._loop.create_task(result)
                task.add_done_callback(lambda done: self._answer_task(waiter, done))
            else:
                self._answer(waiter, True, result)

        return self._submit(start, args)

    def _answer_task(self, waiter, task) -> None:
        if task.cancelled():
            self._answer(waiter, False, asyncio.CancelledError())
        elif task.exception() is not None:
            self._answer(waiter, False, task.exception())
        else:
            self._answer(waiter, True, task.result())

    def unary_channel(self, target: str, method: str, *, credentials=None, options=()) -> UnaryMethod:
        """A channel to ``target`` (TLS when ``credentials`` is given) and its raw-bytes ``method``."""
        channel, multicallable = self._open(target, method, "unary_unary", credentials, options)
        return UnaryMethod(self, channel, multicallable)

    def stream_channel(self, target: str, method: str, *, credentials=None, options=()) -> StreamMethod:
        """A channel to ``target`` (TLS when ``credentials`` is given) and its raw-bytes stream-stream ``method``."""
        channel, multicallable = self._open(target, method, "stream_stream", credentials, options)
        return StreamMethod(self, channel, multicallable)

    def _open(self, target: str, method: str, kind: str, credentials, options):
        """Open the channel on the loop thread (grpc.aio channels belong to the loop that made them)."""

        def open_channel():
            import grpc.aio

            if credentials is not None:
                channel = grpc.aio.secure_channel(target, credentials, options=list(options))
            else:
                channel = grpc.aio.insecure_channel(target, options=list(options))
            return channel, getattr(channel, kind)(method, request_serializer=None, response_deserializer=None)

        return self.run(open_channel)


class UnaryMethod:
    """One unary method of one grpc.aio channel, called from greenlets with bytes in and bytes out."""

    def __init__(self, loop: GrpcLoop, channel, multicallable):
        self._loop = loop
        self._channel = channel
        self._multicallable = multicallable
        self._start_call = self._start  # bound once

    def _start(self, waiter, request: bytes, metadata, timeout):
        call = self._multicallable(request, metadata=metadata, timeout=timeout)
        # grpc.aio's own task for the call: it ends with the response bytes, or EOF when the status is not OK
        call._invocation_task.add_done_callback(lambda task: self._finished(waiter, call, task))

    def _finished(self, waiter, call, task) -> None:
        loop = self._loop
        if task.cancelled() or task.exception() is not None or not call._cython_call.is_ok():
            loop._loop.create_task(self._error(waiter, call))
        else:
            loop._answer(waiter, True, task.result())

    async def _error(self, waiter, call) -> None:
        try:
            await call
        except BaseException as exc:  # grpc.aio.AioRpcError: the status, details and debug string
            self._loop._answer(waiter, False, exc)
        else:  # not reached: a call that is not OK raises
            self._loop._answer(waiter, False, RuntimeError("gRPC call ended without a response"))

    def __call__(self, request: bytes, metadata=(), timeout: float | None = None) -> bytes:
        """Send the serialised request; the serialised response (raises ``grpc.aio.AioRpcError``)."""
        return self._loop._submit(self._start_call, (request, metadata, timeout))

    def close(self) -> None:
        self._loop.run(self._channel.close)


class StreamMethod:
    """One stream-stream method of one grpc.aio channel; its calls are opened and used from greenlets."""

    def __init__(self, loop: GrpcLoop, channel, multicallable):
        self._loop = loop
        self._channel = channel
        self._multicallable = multicallable

    def open(self, metadata=(), now=None) -> BidiStream:
        """Start one call (returns at once; the call opens on the loop thread before anything sent on it)."""
        return BidiStream(self._loop, self._multicallable, metadata, now)

    def close(self) -> None:
        self._loop.run(self._channel.close)


class BidiStream:
    """One bidirectional call: greenlets send request bytes and receive every response with its arrival time.

    The arrival time is read on the loop thread (``now()`` as soon as grpc.aio hands the message over),
    so a greenlet that wakes up later still sees when each message arrived: time to first token and the
    gaps between chunks are measured at arrival, not at the greenlet's turn on the hub. Responses are
    queued here in order and handed over in batches with the loop's other answers; only the greenlet
    waiting on this stream is woken.
    """

    def __init__(self, loop: GrpcLoop, multicallable, metadata, now=None):
        import time

        self._loop = loop
        self._now = now or time.perf_counter
        self._inbox: deque = deque()  # (ok, (arrival, message bytes or None at the end) or the call's error)
        self._waiter = None  # the greenlet waiting in receive(), if any
        self._requests: asyncio.Queue | None = None  # loop thread only
        self._call = None
        loop.post(self._open, (multicallable, tuple(metadata)), self)

    # -- loop thread ---------------------------------------------------------------------------------
    def _open(self, _receiver, multicallable, metadata) -> None:
        self._requests = asyncio.Queue()
        self._call = multicallable(self._request_iterator(), metadata=metadata)
        self._loop._loop.create_task(self._read(self._call))

    async def _request_iterator(self):
        requests = self._requests
        while True:
            request = await requests.get()
            if request is None:
                return
            yield request

    async def _read(self, call) -> None:
        from grpc.aio import EOF

        answer, now = self._loop._answer, self._now
        try:
            while True:
                message = await call.read()
                at = now()
                if message is EOF:  # the server ended the call with status OK
                    answer(self, True, (at, None))
                    return
                answer(self, True, (at, message))
        except BaseException as exc:  # grpc.aio.AioRpcError (a status that is not OK), CancelledError (cancel)
            answer(self, False, exc)

    def _write(self, _receiver, request) -> None:
        self._requests.put_nowait(request)

    def _cancel(self, _receiver) -> None:
        if self._call is not None:
            self._call.cancel()

    # -- hub: GrpcLoop._wake_waiters hands responses over as to a Waiter, then wakes the stream once ----
    def switch(self, value) -> None:
        self._deliver((True, value))

    def throw(self, exc) -> None:
        self._deliver((False, exc))

    def _deliver(self, item) -> None:
        self._inbox.append(item)
        if len(self._inbox) == 1:
            self._loop._streams_to_wake.append(self)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.switch(None)

    # -- greenlets -----------------------------------------------------------------------------------
    def send(self, request: bytes) -> None:
        """Queue one serialised request on the call (returns at once, requests go out in order)."""
        self._loop.post(self._write, (request,), self)

    def receive(self) -> tuple[float, bytes | None]:
        """The next response as (arrival time, bytes); bytes None when the server ended the call.

        Raises the call's error (``grpc.aio.AioRpcError``), or ``asyncio.CancelledError`` after ``cancel``.
        Waits in this greenlet only (wrap it in ``gevent.Timeout`` for a deadline).
        """
        while not self._inbox:
            from gevent._waiter import Waiter

            self._waiter = Waiter(self._loop._hub)
            try:
                self._waiter.get()
            finally:
                self._waiter = None
        ok, value = self._inbox.popleft()
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        """End the call; what it still had in flight is dropped."""
        self._loop.post(self._cancel, (), self)
