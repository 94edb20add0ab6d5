"""What the bot counts about itself: for the console's dashboard (recent windows) and for `/metrics` (Prometheus).

One `Metrics` per running bot; components that are built without one get their own, unread.
Everything here is in memory and cheap: a counter bump per message, one per model call.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "qq_chatgpt_bot"
HOUR = 3600.0
LATENCY_KEPT = 500  # per account, for p50/p95 on the dashboard
ERRORS_KEPT = 10_000  # failure times kept for "errors in the last hour"
MODEL_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
OK = "ok"

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class AccountCalls:
    """One model account's recent calls, for the dashboard."""

    requests: int
    errors: int
    p50: float | None  # seconds, over the last LATENCY_KEPT calls
    p95: float | None


class _Account:
    __slots__ = ("errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency: deque[float] = deque(maxlen=LATENCY_KEPT)


class _Live(Collector):
    """Gauges read when /metrics is scraped: link states and queue depth."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        links = GaugeMetricFamily(
            f"{PREFIX}_link_up", "1 when the platform link is up or listening", labels=["platform", "link"]
        )
        for platform, link, up in self.metrics.links():
            links.add_metric([platform, link], 1.0 if up else 0.0)
        yield links
        queue = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Messages waiting for an answer")
        queue.add_metric([], float(self.metrics.queue_depth()))
        yield queue


class Metrics:
    """Counters, histograms and the dashboard's recent windows."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self._in = Counter(f"{PREFIX}_messages_received", "Messages received", ["platform"], registry=r)
        self._out = Counter(f"{PREFIX}_messages_sent", "Messages sent", ["platform"], registry=r)
        self._answers = Counter(f"{PREFIX}_answers", "Answers to chat messages by outcome", ["outcome"], registry=r)
        self._model = Histogram(
            f"{PREFIX}_model_request_seconds", "Model request time", ["account"], buckets=MODEL_BUCKETS, registry=r
        )
        self._model_errors = Counter(f"{PREFIX}_model_errors", "Failed model requests", ["account", "kind"], registry=r)
        self._tokens = Counter(
            f"{PREFIX}_model_tokens", "Tokens reported by the model server", ["account", "kind"], registry=r
        )
        self._db = Histogram(
            f"{PREFIX}_database_write_seconds", "History database write time", buckets=DB_BUCKETS, registry=r
        )
        r.register(_Live(self))
        self._accounts: dict[str, _Account] = {}
        self._hours: deque[tuple[int, int, int]] = deque(maxlen=25)  # (hour start, ok answers, failed answers)
        self._failures: deque[float] = deque(maxlen=ERRORS_KEPT)
        # what the live gauges read; the app binds its own
        self.links: Callable[[], Iterable[tuple[str, str, bool]]] = lambda: ()
        self.queue_depth: Callable[[], int] = lambda: 0

    # --- recording ------------------------------------------------------------------------------

    def message_in(self, platform: str) -> None:
        self._in.labels(platform).inc()

    def message_out(self, platform: str) -> None:
        self._out.labels(platform).inc()

    def answer(self, outcome: str) -> None:
        """A chat message was answered ("ok") or failed (the failure kind: timeout, auth, ...)."""
        self._answers.labels(outcome).inc()
        now = self.clock()
        hour = int(now // HOUR * HOUR)
        if self._hours and self._hours[-1][0] == hour:
            _, ok, failed = self._hours.pop()
        else:
            ok = failed = 0
        self._hours.append((hour, ok + (outcome == OK), failed + (outcome != OK)))
        if outcome != OK:
            self._failures.append(now)

    def model_call(
        self,
        account: str,
        seconds: float,
        failure: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """One request to a model account: its time, and its failure kind when it failed."""
        self._model.labels(account).observe(seconds)
        calls = self._accounts.get(account)
        if calls is None:
            calls = self._accounts[account] = _Account()
        calls.requests += 1
        if failure is not None:
            calls.errors += 1
            self._model_errors.labels(account, failure).inc()
        else:
            calls.latency.append(seconds)
        if prompt_tokens:
            self._tokens.labels(account, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self._tokens.labels(account, "completion").inc(completion_tokens)

    def database_write(self, seconds: float) -> None:
        self._db.observe(seconds)

    # --- reading --------------------------------------------------------------------------------

    def account_calls(self, account: str) -> AccountCalls:
        calls = self._accounts.get(account) or _Account()
        latency = sorted(calls.latency)
        return AccountCalls(calls.requests, calls.errors, _quantile(latency, 0.5), _quantile(latency, 0.95))

    def answers_per_hour(self, hours: int = 24) -> list[tuple[int, int, int]]:
        """(hour start, ok, failed) for each of the last `hours` hours, oldest first, zeros included."""
        now_hour = int(self.clock() // HOUR * HOUR)
        known = {start: (ok, failed) for start, ok, failed in self._hours}
        starts = [now_hour - int(HOUR) * back for back in range(hours - 1, -1, -1)]
        return [(start, *known.get(start, (0, 0))) for start in starts]

    def failures_last_hour(self) -> int:
        since = self.clock() - HOUR
        return sum(1 for at in self._failures if at > since)

    def exposition(self) -> bytes:
        """Everything in Prometheus' text format."""
        return generate_latest(self.registry)


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]
