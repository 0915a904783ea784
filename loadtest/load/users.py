"""Locust users that load Triton: closed loop (``TritonUser``, ``ABTritonUser``) and open loop (``OpenLoopUser``).

Closed loop: each user sends one request, waits for the answer, sends the next (no think time by
default): concurrency is the knob and latency is end - start. A ``TritonUser`` cycles through the
models request by request; an ``ABTritonUser`` sends the *same* payload to every model at the same
moment and waits for all, so teacher and student see identical requests under identical load.

Open loop: an ``OpenLoopUser`` is a *driver*, not a client. It keeps a schedule of intended send
times per model (constant or Poisson, seeded) for the arrival rate (``--arrival-rate``, or the rate
shape's stage), split evenly over all drivers of the test, and spawns one greenlet per request. At most
``--max-in-flight`` requests per model are in flight per driver; a send that cannot leave within
``--late-tolerance`` of its intended time is *late*; one still waiting when its stage ends (or the
test stops) is *dropped* and counted. Latency runs from the intended time, so a stalled server shows
in the percentiles instead of slowing the schedule down (coordinated omission, as wrk2 and k6's
constant-arrival-rate executor avoid it).

Payloads are prepared once per process (``LoadProcess.prepared_requests``) and shared read-only by the
users; a user only picks the next one. Each user takes the process state from the environment Locust
gives it (``process_of``), once in ``on_start``, and keeps the stage board as its own attribute.
"""

from __future__ import annotations

import itertools
import logging

import gevent
import numpy as np
from gevent import GreenletExit
from gevent.lock import BoundedSemaphore
from gevent.pool import Group
from locust import User, constant, task
from locust.exception import StopUser
from locust.user.task import LOCUST_STATE_STOPPING, LOCUST_STATE_WAITING

from loadtest.load import lifecycle  # noqa: F401  (registers the test's listeners: run dir, records, metrics)
from loadtest.load.backoff import Backoff, is_connection_error
from loadtest.load.clock import CLOCK
from loadtest.load.process import LoadProcess, process_of
from loadtest.load.triton_client import TritonClient

log = logging.getLogger("loadtest")
_USER_NUMBERS = itertools.count()
_DRIVER_NUMBERS = itertools.count()
DRIVER_POLL_S = 0.05  # how often a waiting driver or send re-checks the stage board
# Sends waiting for a slot, per model and driver, as a multiple of --max-in-flight: beyond it a due send is
# dropped (and counted) at once instead of becoming one more waiting greenlet. Bounds the driver's memory
# whatever the rate and however long the server stalls.
QUEUED_SENDS_PER_SLOT = 4


def _process(user: User) -> LoadProcess:
    """The process state for this test, or StopUser if the test could not start."""
    process = process_of(user.environment)
    if process is None or not process.ready:
        raise StopUser()
    return process


def _start_client(user: User, process: LoadProcess, concurrency: int) -> tuple[TritonClient, dict]:
    """The user's client and the shared prepared requests."""
    context = process.context
    client = TritonClient(
        context.endpoint,
        user.environment.events.request,
        scenario=type(user).__name__,
        worker=process.worker,
        concurrency=concurrency,
        timeout_s=context.options.request_timeout,
        metrics=process.metrics,
        credentials=context.credentials,
    )
    return client, process.prepared_requests(context.endpoint.protocol)


class TritonUser(User):
    """Closed loop: one request at a time, cycling through the models (subclass it in a locustfile)."""

    abstract = True
    wait_time = constant(0)
    send_to_all_models = False  # ABTritonUser: the same payload to every model at once
    _in_request = False
    _kill_pending = False  # Locust delivers a kill on the hub's next turn: no new request meanwhile

    def on_start(self) -> None:
        process = _process(self)
        context = process.context
        self.process = process
        self.board = process.board
        self.models = context.model_names
        self.client, self.requests = self.start_client(process, len(self.models) if self.send_to_all_models else 1)
        self.n_payloads = len(next(iter(self.requests.values())))
        number = next(_USER_NUMBERS)
        rng = np.random.default_rng([context.options.seed, number])
        self.cursor = int(rng.integers(self.n_payloads))  # users start at different payloads
        self.turn = number % len(self.models)

    def start_client(self, process: LoadProcess, concurrency: int) -> tuple:
        """The user's client and the shared prepared requests (the LLM users override this)."""
        return _start_client(self, process, concurrency)

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def _next_index(self) -> int:
        index = self.cursor
        self.cursor = (self.cursor + 1) % self.n_payloads
        return index

    def stop(self, force: bool = False) -> bool:
        """Never kill a request in flight: let it be answered and recorded, then stop before the next.

        Without ``--stop-timeout`` Locust kills users outright at the end of a test; a request cut off
        then is counted by Triton but by neither Locust nor the records. Deferring the kill to the end
        of the request costs nothing per request (a greenlet per request to shield it cost ~10 µs).
        """
        if force and self._in_request and self._greenlet is not gevent.getcurrent():
            self._state = LOCUST_STATE_STOPPING  # Locust's task loop stops the user after this task
            self._greenlet.join()
            return True
        # gevent throws the kill on the hub's next turn; a user waking from its wait first must not start a
        # request the kill would then cut off (counted by Triton, by neither Locust nor the records)
        self._kill_pending = force or self._state in (None, LOCUST_STATE_WAITING)
        return super().stop(force)

    @task
    def infer(self) -> None:
        if self._kill_pending:
            return
        stage = self.board.label
        self._in_request = True
        try:
            if not self.send_to_all_models:
                model = self.models[self.turn]
                self.turn = (self.turn + 1) % len(self.models)
                self.client.send(self.requests[model][self._next_index()], stage)
            else:
                self._send_to_all(stage)
        finally:
            self._in_request = False
        self._back_off_if_unreachable()

    def _send_to_all(self, stage: str) -> None:
        index = self._next_index()
        sends = [gevent.spawn(self.client.send, self.requests[m][index], stage) for m in self.models]
        try:
            gevent.joinall(sends)
        except GreenletExit:  # stopped meanwhile: let both answers arrive and be recorded first
            gevent.joinall(sends)
            raise

    def _back_off_if_unreachable(self) -> None:
        """After a connection error, wait (exponential, counted); the next success resets it."""
        error = getattr(self.client, "last_error", None)
        backoff = self.__dict__.get("backoff") or self.__dict__.setdefault("backoff", Backoff())  # built once
        if not is_connection_error(error):
            backoff.reset()
            return
        delay = backoff.delay()
        self.process.count_backoff(delay, error)
        gevent.sleep(delay)


class ABTritonUser(TritonUser):
    """Closed loop A/B: each request goes to every model at the same moment, with the same payload."""

    abstract = True
    send_to_all_models = True


class OpenLoopUser(User):
    """Open-loop driver: sends on a schedule of intended times, independent of the answers."""

    abstract = True
    wait_time = constant(0)
    open_loop = True  # lifecycle counts these drivers to split the arrival rate

    def on_start(self) -> None:
        process = _process(self)
        context = process.context
        self.process = process
        self.board = process.board
        self.options = context.options
        self.models = context.model_names
        self.client, self.requests = self.start_client(process, self.options.max_in_flight * len(self.models))
        self.n_payloads = len(next(iter(self.requests.values())))
        self.number = next(_DRIVER_NUMBERS)
        worker_index = max(getattr(self.environment.runner, "worker_index", 0), 0)
        self.rng = np.random.default_rng([self.options.seed, worker_index, self.number])
        self.cursor = int(self.rng.integers(self.n_payloads))
        self.slots = {m: BoundedSemaphore(self.options.max_in_flight) for m in self.models}
        self.queue_limit = self.options.max_in_flight * (1 + QUEUED_SENDS_PER_SLOT) * len(self.models)
        self.sends = Group()
        self.stopping = False

    def start_client(self, process: LoadProcess, concurrency: int) -> tuple:
        """The user's client and the shared prepared requests (the LLM users override this)."""
        return _start_client(self, process, concurrency)

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def _gap(self, rate: float) -> float:
        if self.options.arrival == "poisson":
            return float(self.rng.exponential(1.0 / rate))
        return 1.0 / rate

    def _set_offered(self, rate: float | None) -> None:
        self.process.set_offered_rate(self.number, self.models, rate)

    def _send(self, model: str, request, intended: float, stage: str, version: int) -> None:
        """One scheduled send: wait for a slot (late beyond the tolerance), dropped if its stage ends first."""
        board = self.board
        slot = self.slots[model]
        while not slot.acquire(timeout=DRIVER_POLL_S):
            if self.stopping or board.version != version:
                self.process.count_dropped(model, stage)
                return
        try:
            # this greenlet belongs to the driver's send group, which is joined, never killed
            self.client.send(request, stage, "open", intended, self.options.late_tolerance)
        finally:
            slot.release()

    @task
    def drive(self) -> None:
        board = self.board
        try:
            while board.drivers is None:  # until spawning completes and the rate's split is known
                gevent.sleep(DRIVER_POLL_S)
            plan = None
            next_t = 0.0
            while True:
                if plan != (board.version, board.drivers):
                    plan = (board.version, board.drivers)
                    target = board.rate if board.rate is not None else self.options.arrival_rate
                    rate = target / max(board.drivers or 1, 1)
                    self._set_offered(rate)
                    stage, version = board.label, board.version
                    now = CLOCK.now()
                    if rate > 0:  # a constant schedule starts at a random phase: drivers do not send in lockstep
                        first = self._gap(rate) if self.options.arrival == "poisson" else self.rng.uniform(0, 1 / rate)
                        next_t = now + (first if (board.drivers or 1) > 1 or self.options.arrival == "poisson" else 0.0)
                if rate <= 0:
                    gevent.sleep(DRIVER_POLL_S)
                    continue
                now = CLOCK.now()
                if now < next_t:
                    # refresh the loop's cached clock first: a timer counts from it, and a stale one
                    # (after a busy iteration) makes the send leave late by however stale it was
                    gevent.get_hub().loop.update_now()
                    gevent.sleep(min(next_t - now, DRIVER_POLL_S))
                    continue
                while next_t <= now:  # everything due, even if this loop woke late: never skip a send
                    index = self.cursor
                    self.cursor = (self.cursor + 1) % self.n_payloads
                    for model in self.models:
                        if len(self.sends) >= self.queue_limit:  # in flight + waiting: capped, never unbounded
                            self.process.count_dropped(model, stage)
                            self.process.warn_once("queue-full", "loadtest: open-loop sends are dropped (and counted): "
                                                "%d already in flight or waiting; the server cannot keep up with "
                                                "the rate (raise --max-in-flight or lower the rate)", self.queue_limit)
                            continue
                        self.sends.spawn(self._send, model, self.requests[model][index], next_t, stage, version)
                    next_t += self._gap(rate)
        except GreenletExit:
            self.stopping = True  # waiting sends are dropped; those in flight finish and are recorded
            self._set_offered(None)
            self.sends.join()
            raise
