"""What the API answers, as typed objects. Byte fields (payloads, results) are
decoded from base64; every object keeps the node's full JSON in ``raw``, so a field
this version does not name is still at hand."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

#: Bytes of a payload or output; ``str`` is encoded as UTF-8.
Payload = Union[bytes, bytearray, memoryview, str]

#: Task states after which a task never changes.
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Optional[str]) -> Optional[bytes]:
    if text is None:
        return None
    return base64.b64decode(text)


def to_bytes(data: Payload) -> bytes:
    """Bytes of a payload or output: ``str`` is encoded as UTF-8."""
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


@dataclass(frozen=True)
class Session:
    id: str
    state: str
    redundancy: int
    quorum: int
    priority: int
    tag: Optional[str]
    max_nodes: int
    reserved_nodes: List[str]
    counts: Dict[str, Any]
    applied_index: int
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Session":
        return cls(
            id=str(v["id"]),
            state=str(v.get("state", "open")),
            redundancy=int(v.get("redundancy", 1)),
            quorum=int(v.get("quorum", 1)),
            priority=int(v.get("priority", 0)),
            tag=v.get("tag"),
            max_nodes=int(v.get("max_nodes", 0)),
            reserved_nodes=list(v.get("reserved_nodes") or []),
            counts=dict(v.get("counts") or {}),
            applied_index=int(v.get("applied_index", 0)),
            raw=v,
        )


@dataclass(frozen=True)
class Assignment:
    """One miner's slot of a task, as a task read shows it."""

    miner_id: str
    state: str
    assigned_ms: Optional[int] = None


@dataclass(frozen=True)
class Task:
    id: str
    session_id: str
    state: str
    priority: int
    attempts: int
    assignments: List[Assignment]
    result: Optional[bytes]
    failure: Optional[str]
    idempotency_key: Optional[str]
    history: List[Dict[str, Any]]
    applied_index: int
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the task is finished (completed, failed or cancelled)."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Task":
        return cls(
            id=str(v["id"]),
            session_id=str(v.get("session_id", "")),
            state=str(v["state"]),
            priority=int(v.get("priority", 0)),
            attempts=int(v.get("attempts", 0)),
            assignments=[
                Assignment(
                    miner_id=str(a["miner_id"]),
                    state=str(a["state"]),
                    assigned_ms=a.get("assigned_ms"),
                )
                for a in v.get("assignments") or []
            ],
            result=b64decode(v.get("result")),
            failure=v.get("failure"),
            idempotency_key=v.get("idempotency_key"),
            history=list(v.get("history") or []),
            applied_index=int(v.get("applied_index", 0)),
            raw=v,
        )


@dataclass(frozen=True)
class Submitted:
    """The answer to a submit: the task's id, and whether this call created it
    (``False``: the idempotency key named an earlier task)."""

    task_id: str
    created: bool
    idempotency_key: Optional[str] = None


@dataclass(frozen=True)
class TaskSpec:
    """One task of a batch submit."""

    payload: Payload
    priority: Optional[int] = None
    idempotency_key: Optional[str] = None
    queue_timeout_ms: Optional[int] = None


@dataclass(frozen=True)
class MinerRegistration:
    miner_id: str
    token: str


@dataclass(frozen=True)
class MinerAssignment:
    """One entry of a miner's assignment list."""

    task_id: str
    session_id: str
    payload: Optional[bytes]
    state: str
    task_state: str
    assigned_ms: int

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "MinerAssignment":
        return cls(
            task_id=str(v["task_id"]),
            session_id=str(v.get("session_id", "")),
            payload=b64decode(v.get("payload")),
            state=str(v["state"]),
            task_state=str(v.get("task_state", "")),
            assigned_ms=int(v.get("assigned_ms") or 0),
        )


@dataclass(frozen=True)
class AssignmentList:
    assignments: List[MinerAssignment]
    applied_index: int
    next_after_task: Optional[str]


@dataclass(frozen=True)
class Event:
    """One event of a session's stream.

    ``event`` is ``transition`` (``data`` has ``task_id``, ``session_id``,
    ``state``, ``what``, ``miner_id``, ``at_ms``, ``index``), ``lagged`` (the stream
    skipped ``data["missed"]`` events) or ``resync`` (the node cannot replay from the
    id asked for, or it installed a snapshot): after either of the last two, re-read
    the tasks you follow. ``id`` resumes the stream after this event.
    """

    event: str
    data: Dict[str, Any]
    id: Optional[str] = None

    @property
    def task_id(self) -> Optional[str]:
        v = self.data.get("task_id")
        return None if v is None else str(v)

    @property
    def state(self) -> Optional[str]:
        v = self.data.get("state")
        return None if v is None else str(v)
