"""Typed errors of the Session Queue API.

Every error answer of a node is ``{"error": {"code": "...", "message": "..."}}``
with a status; :func:`error_from_response` turns it into one class per code, so a
caller can ``except QueueFullError`` instead of comparing strings. Each error says
whether the write it answers may have been applied (:attr:`maybe_applied`): only
``outcome_unknown`` and a connection lost after the request was sent leave that open.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type


class SessionQueueError(Exception):
    """Base of every error this package raises."""

    #: Whether the call may have changed the cluster's state although it failed.
    maybe_applied: bool = False


class NoNodeAvailableError(SessionQueueError):
    """No node could be reached (connection refused or timed out before the
    request was sent to any node): nothing was written."""


class ConnectionLostError(SessionQueueError):
    """The request was sent but no answer came (the connection broke or the read
    timed out): a write may have been applied. Retry only a write that is safe to
    repeat (a submit with an idempotency key)."""

    maybe_applied = True


class ApiError(SessionQueueError):
    """A node answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: Optional[float] = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.body = body


class BadRequestError(ApiError):
    """400 ``invalid``: the request is malformed or breaks a rule."""


class UnauthorizedError(ApiError):
    """401 ``unauthorized``: no key, or an unknown key or miner token."""


class ForbiddenError(ApiError):
    """403 ``forbidden``: the key does not grant this call."""


class NotFoundError(ApiError):
    """404 ``not_found``: unknown session, task, miner or endpoint."""


class ConflictError(ApiError):
    """409 ``conflict``: an illegal transition (nothing changed)."""


class IdempotencyConflictError(ConflictError):
    """409 ``idempotency_conflict``: the key was used for another task."""


class MinerGoneError(ConflictError):
    """409: the miner was declared gone (missed heartbeats, or left); register again."""


class PayloadTooLargeError(ApiError):
    """413 ``too_large``."""


class RevealMismatchError(ApiError):
    """422 ``reveal_mismatch``: the reveal does not hash to the precommit; the
    assignment is rejected."""


class TooManyRequestsError(ApiError):
    """429: refused for now, nothing written; retry after :attr:`retry_after`."""


class QueueFullError(TooManyRequestsError):
    """429 ``queue_full``: the session holds its most unfinished tasks."""


class OverloadedError(TooManyRequestsError):
    """429 ``overloaded``: the node is past its load bound."""


class StateFullError(TooManyRequestsError):
    """429 ``state_full``: the cluster's state is at its bound."""


class ServiceUnavailableError(ApiError):
    """503: no leader in time."""


class UnavailableError(ServiceUnavailableError):
    """503 ``unavailable``: nothing was written; retrying is safe."""


class OutcomeUnknownError(ServiceUnavailableError):
    """503 ``outcome_unknown``: the write may have been applied; retry only with
    an idempotency key."""

    maybe_applied = True


class ServerError(ApiError):
    """Another 5xx (``internal``)."""


_BY_CODE: Dict[str, Type[ApiError]] = {
    "invalid": BadRequestError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "idempotency_conflict": IdempotencyConflictError,
    "too_large": PayloadTooLargeError,
    "reveal_mismatch": RevealMismatchError,
    "queue_full": QueueFullError,
    "overloaded": OverloadedError,
    "state_full": StateFullError,
    "unavailable": UnavailableError,
    "outcome_unknown": OutcomeUnknownError,
    "internal": ServerError,
}

_BY_STATUS: Dict[int, Type[ApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: RevealMismatchError,
    429: TooManyRequestsError,
    503: ServiceUnavailableError,
}


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a ``Retry-After`` header (only the delay-seconds form)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_from_response(
    status: int, body: Any, retry_after: Optional[str] = None
) -> ApiError:
    """The typed error of an error answer (``body`` is its parsed JSON, if any)."""
    code = ""
    message = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or "")
        message = str(body["error"].get("message") or "")
    elif isinstance(body, str):
        message = body
    cls = _BY_CODE.get(code)
    if cls is None or _status_of(cls) not in (None, status):
        cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    if status == 409 and " is gone" in message:
        cls = MinerGoneError
    return cls(
        status,
        code or str(status),
        message,
        retry_after=parse_retry_after(retry_after),
        body=body,
    )


def _status_of(cls: Type[ApiError]) -> Optional[int]:
    for status, base in _BY_STATUS.items():
        if issubclass(cls, base):
            return status
    return None
