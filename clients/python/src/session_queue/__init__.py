"""Python client of Session Queue, a Raft-replicated task queue.

- :class:`Client`: sessions, tasks (submit, batch, get, wait, cancel), miner calls,
  operator reads, event streams; several nodes with failover.
- :class:`Miner`: a miner serving a function from payload to output.
- :mod:`session_queue.errors`: one exception class per error code.
"""

from .aio import AsyncClient
from .client import BatchSubmitted, Client, StepResult, WaitTimeoutError, commitment
from .errors import (
    ApiError,
    BadRequestError,
    ConflictError,
    ConnectionLostError,
    ForbiddenError,
    IdempotencyConflictError,
    MinerGoneError,
    NoNodeAvailableError,
    NotFoundError,
    OutcomeUnknownError,
    OverloadedError,
    PayloadTooLargeError,
    QueueFullError,
    RevealMismatchError,
    ServerError,
    ServiceUnavailableError,
    SessionQueueError,
    StateFullError,
    TooManyRequestsError,
    UnauthorizedError,
    UnavailableError,
)
from .miner import Miner, MinerStats
from .models import (
    Assignment,
    AssignmentList,
    Event,
    MinerAssignment,
    MinerRegistration,
    Session,
    Submitted,
    Task,
    TaskSpec,
)
from .streams import EventStream, WebSocketEventStream, WebSocketUnsupportedError

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncClient",
    "Assignment",
    "AssignmentList",
    "BadRequestError",
    "BatchSubmitted",
    "Client",
    "ConflictError",
    "ConnectionLostError",
    "Event",
    "StepResult",
    "EventStream",
    "ForbiddenError",
    "IdempotencyConflictError",
    "Miner",
    "MinerAssignment",
    "MinerGoneError",
    "MinerRegistration",
    "MinerStats",
    "NoNodeAvailableError",
    "NotFoundError",
    "OutcomeUnknownError",
    "OverloadedError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RevealMismatchError",
    "ServerError",
    "ServiceUnavailableError",
    "Session",
    "SessionQueueError",
    "StateFullError",
    "Submitted",
    "Task",
    "TaskSpec",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnavailableError",
    "WaitTimeoutError",
    "WebSocketEventStream",
    "WebSocketUnsupportedError",
    "commitment",
]
