"""Reads the engine needs (not the read API): one job, the queues, overdue and active jobs.

Every read goes through the connection it is given (never a model class's process-wide one),
and every index read is a ``Query`` of a sparse index, never a scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.connection import Connection
from pynamodb.exceptions import PynamoDBException, TableError
from pynamodb.expressions.condition import Condition

from scheduler.db.models import (
    ACTIVE_SHARD,
    HELD_SHARD,
    QUEUED_SHARD,
    RETRY_SHARD,
    RUN_SHARD,
    JobModel,
    RepoModel,
    group_key,
    holds_slot,
)
from scheduler.errors import JobNotFound, StoreUnavailable

__all__ = ["JobReads", "cause", "job_table"]

_MAX_GROWN_PAGE = 100


def job_table(connection: Connection) -> str:
    """The jobs table's name, its key schema made known to ``connection`` (once per name).

    A plain :class:`Connection` serializes keys and expressions from a table's schema; the
    model knows it, so it is registered from there (under the name the models are bound to).
    """
    name: str = JobModel.Meta.table_name
    try:
        connection.get_meta_table(name)
    except TableError:
        # PynamoDB has no public way to get a model's MetaTable without a DescribeTable call.
        connection.add_meta_table(JobModel._get_connection().get_meta_table())
    return name


class JobReads:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def get(self, job_id: str) -> JobModel:
        """One job, read consistently (callers that read before a transition need the latest)."""
        item = self.raw(job_id)
        if item is None:
            raise JobNotFound(job_id)
        return JobModel.from_raw_data(item)

    def queued(
        self, repo: str, *, limit: int, page_size: int, growing: bool = False
    ) -> Iterator[JobModel]:
        """The oldest (then lowest priority number) queued jobs of ``repo``, lazily by page.

        The sparse ``queued`` index holds only pending jobs; on AWS it lags the table a little,
        so a caller checks each job's status before acting on it. ``growing``: each page is
        twice the last (up to 100 jobs), for a caller that usually needs a few jobs but may
        have to read past many (a promotion passing over a held concurrency group's jobs).
        """
        yield from self._query(
            repo,
            index="queued",
            what=f"queue of {repo}",
            limit=limit,
            page_size=page_size,
            growing=growing,
        )

    def overdue(self, now: int, *, limit: int) -> list[JobModel]:
        """Active jobs whose deadline is before ``now`` (sparse ``active_by_deadline`` index)."""
        return list(
            self._query(
                ACTIVE_SHARD,
                index="active_by_deadline",
                what="overdue jobs",
                limit=limit,
                page_size=limit,
                range_key_condition=JobModel.deadline_at < now,
            )
        )

    def raw(self, job_id: str) -> dict[str, Any] | None:
        """A job's item as DynamoDB JSON (consistent), or None: for items that may not parse."""
        try:
            found = self._connection.get_item(
                job_table(self._connection), job_id, consistent_read=True
            )
        except PynamoDBException as exc:
            raise StoreUnavailable(f"cannot read job {job_id}: {cause(exc)}") from exc
        item = found.get("Item")
        return dict(item) if item else None

    def slots_in_use(self, repo: str) -> int:
        """The slots ``repo``'s active jobs hold (its counters item, read consistently).

        A hint for promotion, which would otherwise learn that a repository is full from a
        cancelled transaction: every activation still checks the count in its own write.
        """
        running = self.repos_attribute(repo, "running", what=f"the slots of {repo}")
        return int(running.get("N", "0"))

    def group_holder(self, repo: str, group: str) -> str | None:
        """The job of ``repo``'s concurrency group ``group`` that holds a slot now, or None
        when the group is free (two consistent reads: the group's item, then its holder)."""
        key = group_key(repo, group)
        holder = self.repos_attribute(key, "holder", what=f"concurrency group {key}").get("S")
        if holder is None:
            return None
        try:
            return holder if holds_slot(self.get(holder)) else None
        except JobNotFound:
            return None

    def repos_attribute(self, key: str, name: str, *, what: str) -> dict[str, Any]:
        """One attribute (DynamoDB JSON, ``{}`` if absent) of a repos-table item, consistently.

        Through this connection's client, already made: creating botocore clients from many
        threads at once (what a race of deliveries does) takes seconds.
        """
        try:
            found = self._connection.client.get_item(
                TableName=RepoModel.Meta.table_name,
                Key={"repo": {"S": key}},
                ConsistentRead=True,
                ProjectionExpression=name,
            )
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"cannot read {what}: {exc}") from exc
        return dict(found.get("Item", {}).get(name, {}))

    def repos_with_queue(
        self, *, after: str | None, limit: int
    ) -> tuple[list[tuple[str, int]], str | None]:
        """Repositories marked as having queued work, by name after ``after``, at most ``limit``.

        One query of the repos table's sparse ``with_queue`` index; each repository comes
        with its pending count as the index has it (eventually consistent on AWS: a caller's
        conditional write decides). Returns them and where the next page starts (None: this
        was the last page).
        """
        condition = "queue_shard = :queued" + (" AND #repo > :after" if after else "")
        values: dict[str, Any] = {":queued": {"S": QUEUED_SHARD}}
        if after:
            values[":after"] = {"S": after}
        try:
            page = self._connection.client.query(
                TableName=RepoModel.Meta.table_name,
                IndexName="with_queue",
                KeyConditionExpression=condition,
                ExpressionAttributeValues=values,
                **({"ExpressionAttributeNames": {"#repo": "repo"}} if after else {}),
                Limit=limit,
            )
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"cannot read the repositories with queued jobs: {exc}") from exc
        found = [
            (item["repo"]["S"], int(item.get("n_pending", {}).get("N", "0")))
            for item in page.get("Items", [])
        ]
        more = page.get("LastEvaluatedKey")
        return found, (more["repo"]["S"] if more else None)

    def held_slots(self, *, limit: int) -> list[JobModel]:
        """Finished jobs that still hold a slot (cancelled runs not yet known stopped), oldest
        finish first: the sparse ``held_slots`` index holds exactly those."""
        return list(
            self._query(
                HELD_SHARD, index="held_slots", what="held slots", limit=limit, page_size=limit
            )
        )

    def owed_verdicts(self, before: int, *, limit: int) -> list[JobModel]:
        """Failed jobs that finished before ``before`` and may still owe an automatic retry
        (their finish's record was lost, or owed none), oldest first: the ``held_slots``
        index's RETRY_SHARD part holds exactly those."""
        return list(
            self._query(
                RETRY_SHARD,
                index="held_slots",
                what="failures owing a retry verdict",
                limit=limit,
                page_size=limit,
                range_key_condition=JobModel.finished_at < before,
            )
        )

    def running_pipelines(self, before: int, *, limit: int) -> list[JobModel]:
        """Pipeline runs that began running their steps before ``before``, oldest first: the
        ``active_by_deadline`` index's RUN_SHARD part holds exactly the runs not ended, and the
        cancelled ones whose steps may not all be cancelled yet."""
        return list(
            self._query(
                RUN_SHARD,
                index="active_by_deadline",
                what="running pipelines",
                limit=limit,
                page_size=limit,
                range_key_condition=JobModel.deadline_at < before,
            )
        )

    def unfinished_in_lane(
        self,
        repo: str,
        lane: Condition,
        *,
        with_active: bool,
        with_pending: bool = True,
        with_waiting: bool = False,
        limit: int = 2000,
        page_size: int = 200,
    ) -> list[JobModel]:
        """The pending, active and waiting jobs of ``repo`` (as asked) that match ``lane``.

        ``lane`` is a filter (event, branch or pull request). Pending jobs come from the sparse
        ``queued`` index keyed by the repository, so only that repository's queue is read;
        active jobs from the sparse ``active_by_deadline`` index, which holds only active jobs
        (at most the sum of the repositories' concurrency limits) and, in a partition of its
        own, the pipeline runs running their steps; waiting jobs (forks' pull
        requests awaiting approval) from the sparse ``waiting`` index keyed by the repository.
        Eventually consistent on AWS: a caller's conditional write is what decides.
        """
        sources = (
            (with_pending, repo, "queued", f"queue of {repo}", lane),
            (with_waiting, repo, "waiting", f"waiting jobs of {repo}", lane),
            (
                with_active,
                ACTIVE_SHARD,
                "active_by_deadline",
                f"active jobs of {repo}",
                (JobModel.repo == repo) & lane,
            ),
            (  # pipeline runs running their steps: the same index's own partition
                with_active,
                RUN_SHARD,
                "active_by_deadline",
                f"running pipelines of {repo}",
                (JobModel.repo == repo) & lane,
            ),
        )
        found: list[JobModel] = []
        for asked, key, index, what, condition in sources:
            if asked:
                found += self._query(
                    key,
                    index=index,
                    what=what,
                    limit=limit,
                    page_size=page_size,
                    filter_condition=condition,
                )
        return found

    def in_lane_since(
        self, repo: str, lane: Condition, since: int, *, page_size: int = 50
    ) -> Iterator[JobModel]:
        """Jobs of ``repo`` matching ``lane`` received at or after ``since``, oldest first.

        One lazy query of the ``by_repo`` index from ``since`` on: it reads only the jobs
        received since then (a handful, when the stream is not far behind).
        """
        yield from self._query(
            repo,
            index="by_repo",
            what=f"recent jobs of {repo}",
            limit=100_000,
            page_size=page_size,
            range_key_condition=JobModel.received_at >= since,
            filter_condition=lane,
        )

    def active(self, *, limit: int = 10_000) -> list[JobModel]:
        """Every active job (the ``active_by_deadline`` index holds exactly those)."""
        return list(
            self._query(
                ACTIVE_SHARD,
                index="active_by_deadline",
                what="active jobs",
                limit=limit,
                page_size=500,
            )
        )

    def _query(self, hash_key: str, **query: Any) -> Iterator[JobModel]:
        """Jobs of an index query (see :meth:`_items` for the arguments)."""
        return (JobModel.from_raw_data(item) for item in self._items(hash_key, **query))

    def _items(
        self,
        hash_key: str,
        *,
        index: str,
        what: str,
        limit: int,
        page_size: int,
        range_key_condition: Any = None,
        filter_condition: Condition | None = None,
        growing: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Raw items of an index query, page by page, at most ``limit``.

        With ``filter_condition`` a page reads ``page_size`` items and returns those matching;
        ``growing`` doubles the page size after each page, up to :data:`_MAX_GROWN_PAGE`.
        """
        start: dict[str, Any] | None = None
        returned = 0
        while returned < limit:
            try:
                page = self._connection.query(
                    job_table(self._connection),
                    hash_key,
                    range_key_condition=range_key_condition,
                    filter_condition=filter_condition,
                    index_name=index,
                    limit=min(page_size, limit - returned),
                    exclusive_start_key=start,
                )
            except PynamoDBException as exc:
                raise StoreUnavailable(f"cannot read the {what}: {cause(exc)}") from exc
            for item in page.get("Items", []):
                returned += 1
                yield item
            start = page.get("LastEvaluatedKey")
            if not start:
                return
            if growing:
                page_size = max(page_size, min(2 * page_size, _MAX_GROWN_PAGE))


def cause(exc: PynamoDBException) -> str:
    """The DynamoDB error code and message behind a PynamoDB exception, for a message."""
    code = exc.cause_response_code
    message = exc.cause_response_message or str(exc.cause or exc)
    return f"{code}: {message}" if code else message
