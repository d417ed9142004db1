"""A shard caught up with a heavy flow is read again after a pause; a trickle never waits."""

from __future__ import annotations

from scheduler.local.read_pacing import ReadPacer


def pacer() -> ReadPacer:
    return ReadPacer(pause_seconds=0.04, busy_records_per_second=60)


def test_a_trickle_is_read_again_at_once() -> None:
    reads = pacer()
    for tick in range(40):  # 30 records a second: a steady 10 deliveries/s
        now = tick * 0.1
        reads.read(now, 3, asked=400)
        assert reads.ready(now)


def test_a_heavy_flow_caught_up_waits_before_the_next_read() -> None:
    reads = pacer()
    now = 0.0
    for _ in range(30):  # 150 records a second, a few per read
        now += 0.02
        reads.read(now, 3, asked=400)
    assert not reads.ready(now) and not reads.ready(now + 0.039)
    assert reads.ready(now + 0.04)


def test_a_backlog_is_read_without_pause() -> None:
    reads = pacer()
    for tick in range(10):
        now = tick * 0.01
        reads.read(now, 400, asked=400)  # a full read: more is waiting
        assert reads.ready(now)


def test_an_empty_read_is_left_to_the_idle_backoff() -> None:
    reads = pacer()
    for tick in range(30):
        reads.read(tick * 0.01, 5, asked=400)
    reads.read(0.31, 0, asked=400)
    assert reads.ready(0.31)


def test_the_flow_is_measured_over_the_last_second_only() -> None:
    reads = pacer()
    for tick in range(30):
        reads.read(tick * 0.01, 5, asked=400)  # 150 records in 0.3 s
    reads.read(2.0, 2, asked=400)  # long after: the burst is over
    assert reads.ready(2.0)
