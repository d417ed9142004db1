"""Builds the stream dispatcher from settings and the repository configuration.

One factory for both runtimes, so the Lambda stream handler and ``scheduler up`` dispatch with
the same per-repository limits, retry policies and commit statuses; only the run starter
differs (a local process, or a CodeBuild build).
"""

from __future__ import annotations

from collections.abc import Callable

from scheduler.config import RepositoryConfig
from scheduler.db.models import JobModel
from scheduler.db.store import JobStore
from scheduler.github.statuses import GitHubNotifier, StatusUpdate, status_for
from scheduler.stream.dispatcher import AutoRetryPolicy, Dispatcher, Transition, TransitionObserver


def commit_status_observer(
    notifier: GitHubNotifier, config: RepositoryConfig, target_url: str | None = None
) -> TransitionObserver:
    """Posts the commit status of each transition in the background (never blocks a record)."""

    def observe(transition: Transition) -> None:
        image = transition.image
        found = status_for(
            transition.source, transition.dest, attempt=transition.job.attempt, reason=image.reason
        )
        if found is None:
            return
        state, description = found
        notifier.submit(
            StatusUpdate(
                repo=image.repo,
                sha=image.sha,
                state=state,
                description=description,
                context=config.policy(image.repo).status_context,
                target_url=target_url.format(job_id=image.job_id) if target_url else None,
            )
        )

    return observe


def build_dispatcher(
    store: JobStore,
    config: RepositoryConfig,
    *,
    on_activated: Callable[[JobModel], object] | None = None,
    observers: list[TransitionObserver] | None = None,
) -> Dispatcher:
    def retry_policy(repo: str) -> AutoRetryPolicy:
        policy = config.policy(repo).retry
        return AutoRetryPolicy(attempts=policy.attempts, on=tuple(policy.on))

    return Dispatcher(
        store,
        slot_limit_for=lambda repo: config.policy(repo).concurrency,
        on_activated=on_activated,
        retry_policy_for=retry_policy,
        observers=observers or (),
    )
