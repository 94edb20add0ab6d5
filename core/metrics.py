"""What the bot counts about itself: for the console's dashboard (recent windows) and for `/metrics` (Prometheus).

One `Metrics` per running bot; components that are built without one get their own, unread.
Counting is plain dict arithmetic (a few hundred nanoseconds per message); prometheus-client is
imported only when `/metrics` is read, which turns the counts into its metric families.
"""

from __future__ import annotations

import bisect
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

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
    p50: float | None  # seconds, over the last LATENCY_KEPT successful calls
    p95: float | None


@dataclass(slots=True)
class _Histogram:
    """Observations counted into fixed buckets, as Prometheus histograms are."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(upper bound, observations at or under it) for each bucket, "+Inf" last."""
        running, found = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            found.append((bound, float(running)))
        return found


class _Account:
    __slots__ = ("errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency: deque[float] = deque(maxlen=LATENCY_KEPT)


class Metrics:
    """Counters, histograms and the dashboard's recent windows."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        # counters by their label values
        self._in: Counter[tuple[str, ...]] = Counter()
        self._out: Counter[tuple[str, ...]] = Counter()
        self._answers: Counter[tuple[str, ...]] = Counter()
        self._model_errors: Counter[tuple[str, ...]] = Counter()
        self._tokens: Counter[tuple[str, ...]] = Counter()
        self._tools: Counter[tuple[str, ...]] = Counter()
        self._voice: Counter[tuple[str, ...]] = Counter()
        self._model: dict[str, _Histogram] = {}
        self._db = _Histogram(DB_BUCKETS)
        self._accounts: dict[str, _Account] = {}
        self._hours: deque[tuple[int, int, int]] = deque(maxlen=25)  # (hour start, ok answers, failed answers)
        self._failures: deque[float] = deque(maxlen=ERRORS_KEPT)
        # what the live gauges read; the app binds its own
        self.links: Callable[[], Iterable[tuple[str, str, bool]]] = lambda: ()
        self.queue_depth: Callable[[], int] = lambda: 0

    # --- recording ------------------------------------------------------------------------------

    def message_in(self, platform: str) -> None:
        self._in[(platform,)] += 1

    def message_out(self, platform: str) -> None:
        self._out[(platform,)] += 1

    def answer(self, outcome: str) -> None:
        """A chat message was answered ("ok") or failed (the failure kind: timeout, auth, ...)."""
        self._answers[(outcome,)] += 1
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
        histogram = self._model.get(account)
        if histogram is None:
            histogram = self._model[account] = _Histogram(MODEL_BUCKETS)
        histogram.observe(seconds)
        calls = self._accounts.get(account)
        if calls is None:
            calls = self._accounts[account] = _Account()
        calls.requests += 1
        if failure is not None:
            calls.errors += 1
            self._model_errors[account, failure] += 1
        else:
            calls.latency.append(seconds)
        if prompt_tokens:
            self._tokens[account, "prompt"] += prompt_tokens
        if completion_tokens:
            self._tokens[account, "completion"] += completion_tokens

    def tool_call(self, tool: str, outcome: str) -> None:
        """A tool the model called: "ok", or why not (error, timeout, refused, rate_limited, bad_arguments)."""
        self._tools[tool, outcome] += 1

    def voice_call(self, kind: str, outcome: str) -> None:
        """A transcription ("stt") or a synthesis ("tts"): "ok" or its failure kind."""
        self._voice[kind, outcome] += 1

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
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self))
        return generate_latest(registry)

    def families(self) -> Iterator[Metric]:
        """The counts as Prometheus metric families (prometheus-client is imported here, when scraped)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        def counter(name: str, help_text: str, labels: Sequence[str], counts: Counter[tuple[str, ...]]) -> Metric:
            family = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=labels)
            for key, value in sorted(counts.items()):
                family.add_metric(list(key), value)
            return family

        yield counter("messages_received", "Messages received", ["platform"], self._in)
        yield counter("messages_sent", "Messages sent", ["platform"], self._out)
        yield counter("answers", "Answers to chat messages by outcome", ["outcome"], self._answers)
        yield counter("model_errors", "Failed model requests", ["account", "kind"], self._model_errors)
        yield counter("model_tokens", "Tokens reported by the model server", ["account", "kind"], self._tokens)
        yield counter("tool_calls", "Tool calls the model made, by outcome", ["tool", "outcome"], self._tools)
        yield counter(
            "voice_calls", "Transcriptions (stt) and syntheses (tts) by outcome", ["kind", "outcome"], self._voice
        )
        model = HistogramMetricFamily(f"{PREFIX}_model_request_seconds", "Model request time", labels=["account"])
        for account, histogram in sorted(self._model.items()):
            model.add_metric([account], histogram.cumulative(), histogram.total)
        yield model
        database = HistogramMetricFamily(f"{PREFIX}_database_write_seconds", "History database write time")
        database.add_metric([], self._db.cumulative(), self._db.total)
        yield database
        links = GaugeMetricFamily(
            f"{PREFIX}_link_up", "1 when the platform link is up or listening", labels=["platform", "link"]
        )
        for platform, link, up in self.links():
            links.add_metric([platform, link], 1.0 if up else 0.0)
        yield links
        queue = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Messages waiting for an answer")
        queue.add_metric([], float(self.queue_depth()))
        yield queue


class _Families:
    """A prometheus-client collector over one Metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]
