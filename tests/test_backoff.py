"""The backoff schedule, walked without sleeping."""

from __future__ import annotations

import random

from core.backoff import Backoff


def test_schedule_doubles_from_one_second_and_caps_at_thirty() -> None:
    backoff = Backoff(min_delay=1.0, max_delay=30.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_jitter_stays_within_ten_percent_and_under_the_cap() -> None:
    backoff = Backoff(jitter=0.1, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    assert 0.9 <= delays[0] <= 1.1
    assert 1.8 <= delays[1] <= 2.2
    assert all(d <= 30.0 for d in delays)
    assert len({round(d, 6) for d in delays[10:]}) > 1  # jittered, not a fixed value


def test_reset_after_a_healthy_link_starts_again() -> None:
    backoff = Backoff(jitter=0.0)
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_thousands_of_attempts_do_not_overflow() -> None:
    backoff = Backoff(jitter=0.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 30.0
