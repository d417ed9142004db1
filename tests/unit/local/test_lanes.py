"""A shard's lanes: the item-key partition and the gapless checkpoint (no server)."""

from __future__ import annotations

from scheduler.local.lanes import Progress, lane_index


def record(job_id: str) -> dict[str, object]:
    return {"dynamodb": {"Keys": {"job_id": {"S": job_id}}}}


def test_one_item_always_has_one_lane_and_items_spread_over_all() -> None:
    assert lane_index(record("a"), 1) == 0
    assert all(lane_index(record("a"), 4) == lane_index(record("a"), 4) for _ in range(3))
    assert {lane_index(record(f"j{n}"), 4) for n in range(100)} == {0, 1, 2, 3}


def test_the_checkpoint_is_the_last_record_before_the_first_unfinished() -> None:
    progress = Progress()
    progress.add(["1", "2", "3", "4", "5"])
    progress.finish(["2", "4"])  # lanes ahead of record 1
    assert progress.advance() is None
    progress.finish(["1"])
    assert progress.advance() == "2"  # 3 is unfinished: not past it
    progress.add(["6"], done=True)  # filtered out: done as read
    progress.finish(["3", "5"])
    assert progress.advance() == "6"
    assert len(progress) == 0
