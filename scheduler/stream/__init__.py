"""Stream record -> transition -> actions: the pure decision and the dispatcher that acts."""

from scheduler.stream.decide import (
    Action,
    Activate,
    PromoteQueued,
    RetryFailed,
    StartRun,
    SupersedeOlder,
    Transition,
    TransitionObserver,
    decide,
    read_transition,
)
from scheduler.stream.dispatcher import RETRY_ACTOR, Dispatcher, RunHook
from scheduler.stream.events import PartialBatchResponse, StreamEvent, StreamRecord
from scheduler.stream.reconciler import Reconciled, Reconciler, RunStops
from scheduler.stream.supersede import Superseder
from scheduler.stream.sweeper import QueueSweeper

__all__ = [
    "RETRY_ACTOR",
    "Action",
    "Activate",
    "Dispatcher",
    "PartialBatchResponse",
    "PromoteQueued",
    "QueueSweeper",
    "Reconciled",
    "Reconciler",
    "RetryFailed",
    "RunHook",
    "RunStops",
    "StartRun",
    "StreamEvent",
    "StreamRecord",
    "SupersedeOlder",
    "Superseder",
    "Transition",
    "TransitionObserver",
    "decide",
    "read_transition",
]
