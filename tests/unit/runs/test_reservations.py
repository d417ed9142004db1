"""A job is reserved by one activator at a time; a reservation never released lapses."""

from __future__ import annotations

from scheduler.runs.reservations import Reservations


def test_one_holder_at_a_time_until_released() -> None:
    now = [0]
    held = Reservations(ttl_ms=2_000, clock=lambda: now[0])
    assert held.reserve("j1") and not held.reserve("j1") and held.reserve("j2")
    assert held.held() == {"j1", "j2"}
    held.release("j1")
    assert held.reserve("j1")


def test_a_reservation_never_released_lapses() -> None:
    now = [0]
    held = Reservations(ttl_ms=2_000, clock=lambda: now[0])
    assert held.reserve("j1")
    now[0] = 2_001  # its holder died between the reserve and the release, say
    assert held.held() == frozenset()
    assert held.reserve("j1")
