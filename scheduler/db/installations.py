"""Which repositories the GitHub App is installed on, kept in the repos table for every process.

On AWS the webhook and the stream run in many processes: an ``installation`` delivery reaches
one of them, and a set in its memory would leave the others building an uninstalled repository.
So each repository the App's installations name has one small item in the repos table
(``installed#owner/name``: installed or not, by which installation, as of when), read through
a short cache.

Deliveries come more than once and out of order (GitHub's redelivery, retries): each change
carries its own time (:attr:`InstallationChange.order_at`) and is written with a condition that
it is newer than what the item holds, so a late or redelivered "added" cannot bring back a
repository removed after it, nor an old "removed" take away one added again since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.db.clients import client
from scheduler.errors import StoreUnavailable
from scheduler.settings import Settings

__all__ = ["CACHE_SECONDS", "INSTALLED_PREFIX", "Installations", "RepoInstallation"]

log = logging.getLogger(__name__)

INSTALLED_PREFIX = "installed#"
"""Key prefix of these items in the repos table (the counters' scans leave them out)."""
CACHE_SECONDS = 5.0
"""How long a process trusts what it read: another process's change is seen within this."""


@dataclass(frozen=True, slots=True)
class RepoInstallation:
    """What the newest change known says of one repository."""

    repo: str
    installed: bool
    installation_id: int
    order_at: int  # the change's own time (epoch microseconds): what orders changes
    delivery_id: str


class Installations:
    """The installed repositories, in the repos table; reads cached for ``cache_seconds``."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        *,
        cache_seconds: float | None = None,  # CACHE_SECONDS
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._cache_seconds = CACHE_SECONDS if cache_seconds is None else cache_seconds
        self._clock = clock
        self._wall_ms = wall_ms
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[RepoInstallation | None, float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Installations:
        return cls(client("dynamodb", settings), settings.tables.repos, **kwargs)

    def record(self, change: RepoInstallation) -> bool:
        """Keep ``change`` unless a newer one is known; True if it is now what the item says.

        A redelivery of the change already kept rewrites the same item (True): its answer must
        not depend on which copy arrived first.
        """
        try:
            # UpdateItem, not PutItem: the webhook function's role may update the repos table's
            # items (counters, trigger guards), and this write needs nothing more.
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"repo": {"S": _key(change.repo)}},
                UpdateExpression=(
                    "SET installed = :installed, installation_id = :installation,"
                    " order_at = :at, delivery_id = :delivery, changed_at = :now"
                ),
                # Only a newer change replaces the item (or the same delivery again): an older
                # one arriving late or redelivered would undo what happened after it. Equal
                # times from two deliveries (whole seconds, no time in the delivery id) keep
                # the first: the order between them is not known, and a later change is.
                ConditionExpression=(
                    "attribute_not_exists(repo) OR order_at < :at OR delivery_id = :delivery"
                ),
                ExpressionAttributeValues={
                    ":installed": {"BOOL": change.installed},
                    ":installation": {"N": str(change.installation_id)},
                    ":at": {"N": str(change.order_at)},
                    ":delivery": {"S": change.delivery_id},
                    ":now": {"N": str(self._wall_ms())},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                self._forget(change.repo)  # a newer change is known: read it next time
                return False
            raise StoreUnavailable(f"installation of {change.repo}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"installation of {change.repo}: {exc}") from exc
        with self._lock:
            self._cache[_key(change.repo)] = (change, self._clock() + self._cache_seconds)
        return True

    def get(self, repo: str) -> RepoInstallation | None:
        """The newest change known for ``repo`` (None if no installation ever named it)."""
        key = _key(repo)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        try:
            answer = self._dynamodb.get_item(
                TableName=self._table, Key={"repo": {"S": key}}, ConsistentRead=True
            )
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"installation of {repo}: {exc}") from exc
        raw = answer.get("Item")
        found = _from_item(repo, raw) if raw else None
        with self._lock:
            self._cache[key] = (found, self._clock() + self._cache_seconds)
        return found

    def uninstalled(self, repo: str) -> bool:
        """True if the newest change known took ``repo`` away from the App."""
        found = self.get(repo)
        return found is not None and not found.installed

    def _forget(self, repo: str) -> None:
        with self._lock:
            self._cache.pop(_key(repo), None)


def _key(repo: str) -> str:
    return INSTALLED_PREFIX + repo.lower()


def _from_item(repo: str, item: dict[str, Any]) -> RepoInstallation:
    return RepoInstallation(
        repo=repo,
        installed=bool(item["installed"]["BOOL"]),
        installation_id=int(item["installation_id"]["N"]),
        order_at=int(item["order_at"]["N"]),
        delivery_id=str(item["delivery_id"]["S"]),
    )
