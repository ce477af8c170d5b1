"""The synchronous client of a Session Queue cluster, on :mod:`httpx`.

It knows several nodes and fails over between them. What it retries, and what not:

- a connection that could not be made (nothing was sent): the next node, at once;
- ``503 unavailable`` (no leader in time, nothing written): the next node, with
  backoff;
- ``429`` (``queue_full``, ``overloaded``, ``state_full``; nothing written): after the
  answer's ``Retry-After`` (at least the backoff);
- ``503 outcome_unknown``, or a connection lost after the request was sent (the
  write may have been applied): retried only for calls that are safe to repeat:
  reads, heartbeats and submits whose every task carries an idempotency key. Submits
  get a fresh key by default (``auto_idempotency_keys``), so they are retried too.
  Other writes raise :class:`~session_queue.errors.OutcomeUnknownError` or
  :class:`~session_queue.errors.ConnectionLostError`.

Every retry happens within ``retry_for`` seconds of the call's start; then the last
error is raised. Any other error answer raises its typed error at once.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import httpx

from ._backoff import Backoff
from .errors import (
    ApiError,
    ConnectionLostError,
    NoNodeAvailableError,
    OutcomeUnknownError,
    SessionQueueError,
    TooManyRequestsError,
    UnavailableError,
    error_from_response,
)
from .models import (
    AssignmentList,
    Payload,
    MinerAssignment,
    MinerRegistration,
    Session,
    Submitted,
    Task,
    TaskSpec,
    b64encode,
    to_bytes,
)

if TYPE_CHECKING:  # pragma: no cover
    from .streams import EventStream, WebSocketEventStream

#: What ``verify`` may be: ``True`` (system CAs), ``False`` (no check: tests only),
#: the path of a CA file (PEM), or a ready :class:`ssl.SSLContext`.
Verify = Union[bool, str, ssl.SSLContext]


#: Keep-alive connections are dropped this long after their last use: well below the
#: nodes' idle timeout, so a node never closes a pooled connection under a request.
_KEEPALIVE_EXPIRY = 5.0


def commitment(output: Payload, nonce: Payload) -> str:
    """The precommit of a reveal: hex ``sha256(output || nonce)`` (the bytes of the
    output followed by the bytes of the nonce)."""
    return hashlib.sha256(to_bytes(output) + to_bytes(nonce)).hexdigest()


def node_url(node: str, tls: bool = False) -> str:
    """``127.0.0.1:7001`` or ``http://h:7001/`` as a base URL (``https`` for a bare
    address when ``tls``)."""
    node = node.strip().rstrip("/")
    if node.startswith(("http://", "https://")):
        return node
    return ("https://" if tls else "http://") + node


def ssl_context(verify: Verify) -> Union[bool, ssl.SSLContext]:
    """``verify`` as httpx and websockets take it: a CA file path becomes a context."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


class WaitTimeoutError(SessionQueueError, TimeoutError):
    """:meth:`Client.wait` ran out of time before the task finished; ``task`` is its
    last known state."""

    def __init__(self, task: Task, timeout: float) -> None:
        super().__init__(f"task {task.id} is still {task.state} after {timeout:g} s")
        self.task = task


@dataclass(frozen=True)
class StepResult:
    """The outcome of one step of :meth:`Client.steps`: the task's ``state`` after
    it when done, else ``error``, the typed error its single-step call (``ack``,
    ``precommit``, ``commit``) would have raised (a
    :class:`~session_queue.errors.RevealMismatchError` is recorded all the same)."""

    task_id: str
    op: str
    status: int
    state: Optional[str]
    error: Optional[ApiError]

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class BatchSubmitted:
    """The answer to a batch submit: the task ids in the order given, and how many
    of them this call created (the others were named by known idempotency keys)."""

    task_ids: List[str]
    created: int
    idempotency_keys: List[Optional[str]]


class Client:
    """A client of one cluster.

    ``nodes``: one address or several (``host:port`` or URLs); calls go to one node
    and move to the next when it cannot take them. ``api_key``: sent as
    ``Authorization: Bearer`` on user, router and operator calls. ``verify``: for
    ``https`` nodes, ``True``, a CA file path, or an :class:`ssl.SSLContext`.
    ``timeout``: seconds one attempt may take (long polls get their wait on top).
    ``retry_for``: seconds a call keeps retrying what may be retried.

    Thread-safe: one client may serve many threads (a :class:`~session_queue.Miner`
    runs two).
    """

    def __init__(
        self,
        nodes: Union[str, Sequence[str]] = "127.0.0.1:7001",
        *,
        api_key: Optional[str] = None,
        verify: Verify = True,
        timeout: float = 30.0,
        connect_timeout: float = 2.0,
        retry_for: float = 30.0,
        auto_idempotency_keys: bool = True,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        if isinstance(nodes, str):
            nodes = [n for n in nodes.split(",") if n.strip()]
        # A CA file or an SSL context implies TLS: bare addresses become https.
        tls = isinstance(verify, (str, ssl.SSLContext))
        self.nodes: List[str] = [node_url(n, tls=tls) for n in nodes]
        if not self.nodes:
            raise ValueError("a client needs at least one node")
        self.api_key = api_key
        self.verify = ssl_context(verify)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self.auto_idempotency_keys = auto_idempotency_keys
        self._current = 0
        self._lock = threading.Lock()
        self._http = httpx.Client(
            verify=self.verify,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=64,
                max_keepalive_connections=16,
                keepalive_expiry=_KEEPALIVE_EXPIRY,
            ),
            trust_env=False,
            transport=transport,
        )

    # -- plumbing ---------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _node(self) -> Tuple[int, str]:
        with self._lock:
            i = self._current % len(self.nodes)
            return i, self.nodes[i]

    def _advance(self, i: int) -> None:
        """Moves on from node ``i`` (unless another thread already did)."""
        with self._lock:
            if self._current % len(self.nodes) == i:
                self._current = (i + 1) % len(self.nodes)

    def _headers(self, token: Optional[str]) -> Dict[str, str]:
        bearer = token if token is not None else self.api_key
        return {"Authorization": f"Bearer {bearer}"} if bearer else {}

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        token: Optional[str] = None,
        safe: bool = False,
        extra_wait: float = 0.0,
        retry_for: Optional[float] = None,
    ) -> Any:
        """One API call with failover and retries (see the module documentation);
        returns the answer's JSON (``None`` for an empty body) or raises a
        :class:`~session_queue.errors.SessionQueueError`.

        ``token`` replaces the API key (miner calls). ``safe``: the call may be
        repeated when its outcome is unknown. ``extra_wait``: seconds the node may
        hold the call (a long poll), added to the read timeout."""
        retry = _Retry(len(self.nodes), safe, self.retry_for if retry_for is None else retry_for)
        headers = self._headers(token)
        timeout = httpx.Timeout(self.timeout + extra_wait, connect=self.connect_timeout)
        while True:
            i, base = self._node()
            url = base + path
            try:
                response = self._http.request(
                    method, url, json=json, params=params, headers=headers, timeout=timeout
                )
            except httpx.TransportError as e:
                wait = retry.transport_failed(e, f"{method} {url}")
                self._advance(i)
            else:
                if response.is_success:
                    return _json_of(response)
                wait, advance = retry.refused(_error_of(response))
                if advance:
                    self._advance(i)
            if wait > 0:
                time.sleep(wait)

    # -- sessions ----------------------------------------------------------------

    def create_session(
        self,
        *,
        redundancy: Optional[int] = None,
        quorum: Optional[int] = None,
        priority: Optional[int] = None,
        tag: Optional[str] = None,
        max_nodes: Optional[int] = None,
        ack_timeout_ms: Optional[int] = None,
        precommit_timeout_ms: Optional[int] = None,
        commit_timeout_ms: Optional[int] = None,
        max_attempts: Optional[int] = None,
        owner: Optional[str] = None,
        **more: Any,
    ) -> Session:
        """Creates a session (``redundancy`` k miners per task, ``quorum`` q matching
        reveals; every field optional, others by their wire name in ``more``, e.g.
        ``queue_timeout_ms``, ``retention_ms``, ``max_queued_tasks``)."""
        body = {
            k: v
            for k, v in dict(
                redundancy=redundancy,
                quorum=quorum,
                priority=priority,
                tag=tag,
                max_nodes=max_nodes,
                ack_timeout_ms=ack_timeout_ms,
                precommit_timeout_ms=precommit_timeout_ms,
                commit_timeout_ms=commit_timeout_ms,
                max_attempts=max_attempts,
                owner=owner,
                **more,
            ).items()
            if v is not None
        }
        v = self.request("POST", "/v1/sessions", json=body)
        if "redundancy" not in v:
            # A node that has not applied its own write yet answers the id alone;
            # the read catches up with the leader first.
            return self.get_session(str(v["id"]))
        return Session.from_json(v)

    def get_session(self, session_id: str) -> Session:
        return Session.from_json(self.request("GET", f"/v1/sessions/{session_id}", safe=True))

    def close_session(self, session_id: str) -> Dict[str, Any]:
        """Stops the session taking tasks, cancels its unfinished ones and releases
        its miners; answers ``{"id", "state": "closed", "cancelled": n}``."""
        result: Dict[str, Any] = self.request("POST", f"/v1/sessions/{session_id}/close")
        return result

    # -- tasks -------------------------------------------------------------------

    def _task_body(self, spec: TaskSpec) -> Dict[str, Any]:
        return task_body(spec, self.auto_idempotency_keys)

    def submit(
        self,
        session_id: str,
        payload: Payload,
        *,
        priority: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        queue_timeout_ms: Optional[int] = None,
    ) -> Submitted:
        """Submits one task. Without an ``idempotency_key`` the client makes one
        (unless ``auto_idempotency_keys`` is off), so a retry after a lost answer or
        a leader change never creates a second task."""
        body = self._task_body(
            TaskSpec(payload, priority, idempotency_key, queue_timeout_ms)
        )
        key = body.get("idempotency_key")
        v = self.request(
            "POST", f"/v1/sessions/{session_id}/tasks", json=body, safe=key is not None
        )
        return Submitted(task_id=str(v["task_id"]), created=bool(v.get("created", True)), idempotency_key=key)

    def submit_batch(
        self, session_id: str, tasks: Iterable[Union[TaskSpec, Payload]]
    ) -> BatchSubmitted:
        """Submits many tasks at once, all or nothing; ids come back in order."""
        bodies = [
            self._task_body(t if isinstance(t, TaskSpec) else TaskSpec(t)) for t in tasks
        ]
        keys = [b.get("idempotency_key") for b in bodies]
        v = self.request(
            "POST",
            f"/v1/sessions/{session_id}/tasks:batch",
            json={"tasks": bodies},
            safe=all(k is not None for k in keys),
        )
        return BatchSubmitted(
            task_ids=[str(t) for t in v["task_ids"]],
            created=int(v.get("created", len(bodies))),
            idempotency_keys=keys,
        )

    def get_task(self, task_id: str, *, linearizable: bool = False) -> Task:
        """Reads a task from the node asked; ``linearizable`` makes it a read-index
        read through the leader (it reflects every write answered before it)."""
        params = {"consistency": "linearizable"} if linearizable else None
        return Task.from_json(self.request("GET", f"/v1/tasks/{task_id}", params=params, safe=True))

    def wait(self, task_id: str, timeout: float = 60.0, *, poll: float = 30.0) -> Task:
        """Long-polls the task until it is finished (completed, failed or cancelled)
        and returns it; raises :class:`WaitTimeoutError` after ``timeout`` seconds.
        Each poll asks the node to hold it at most ``poll`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            hold = max(0.0, min(poll, remaining))
            v = self.request(
                "GET",
                f"/v1/tasks/{task_id}",
                params={"wait": "completed", "timeout": f"{int(hold * 1000)}ms"},
                safe=True,
                extra_wait=hold,
            )
            task = Task.from_json(v)
            if task.done:
                return task
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(task, timeout)

    def cancel(self, task_id: str) -> str:
        """Cancels a task that is not finished; returns its state (``cancelled``)."""
        v = self.request("POST", f"/v1/tasks/{task_id}/cancel")
        return str(v["state"])

    # -- miners ------------------------------------------------------------------

    def register_miner(
        self,
        name: str,
        *,
        capacity: int = 1,
        tags: Sequence[str] = (),
        heartbeat_timeout_ms: Optional[int] = None,
        miner_key: Optional[str] = None,
    ) -> MinerRegistration:
        """Registers a miner; ``miner_key`` (the node's ``--miner-key``) replaces the
        API key for this call. Keep the token: it is shown once."""
        body: Dict[str, Any] = {"name": name, "capacity": capacity, "tags": list(tags)}
        if heartbeat_timeout_ms is not None:
            body["heartbeat_timeout_ms"] = heartbeat_timeout_ms
        v = self.request("POST", "/v1/miners", json=body, token=miner_key)
        return MinerRegistration(miner_id=str(v["miner_id"]), token=str(v["token"]))

    def heartbeat(self, miner_id: str, token: str, *, retry_for: Optional[float] = None) -> Dict[str, Any]:
        """Keeps the miner alive; answers the miner (with ``heartbeat_timeout_ms``)."""
        result: Dict[str, Any] = self.request(
            "POST", f"/v1/miners/{miner_id}/heartbeat", json={}, token=token, safe=True,
            retry_for=retry_for,
        )
        return result

    def get_miner(self, miner_id: str, token: str) -> Dict[str, Any]:
        result: Dict[str, Any] = self.request("GET", f"/v1/miners/{miner_id}", token=token, safe=True)
        return result

    def assignments(
        self,
        miner_id: str,
        token: str,
        *,
        wait_ms: Optional[int] = None,
        after: Optional[int] = None,
        limit: Optional[int] = None,
        after_task: Optional[str] = None,
        retry_for: Optional[float] = None,
    ) -> AssignmentList:
        """The miner's unfinished assignments. ``wait_ms`` long-polls: without
        ``after`` until there is one, with ``after`` (the ``applied_index`` of the
        previous answer) until the list may have changed since."""
        params: Dict[str, Any] = {}
        for k, v in (("wait_ms", wait_ms), ("after", after), ("limit", limit), ("after_task", after_task)):
            if v is not None:
                params[k] = v
        v = self.request(
            "GET",
            f"/v1/miners/{miner_id}/assignments",
            params=params,
            token=token,
            safe=True,
            extra_wait=(wait_ms or 0) / 1000.0,
            retry_for=retry_for,
        )
        return AssignmentList(
            assignments=[MinerAssignment.from_json(a) for a in v.get("assignments") or []],
            applied_index=int(v.get("applied_index", 0)),
            next_after_task=v.get("next_after_task"),
        )

    def ack(self, task_id: str, token: str, *, retry_for: Optional[float] = None) -> str:
        """Acknowledges the miner's assignment; returns the task's state."""
        v = self.request("POST", f"/v1/tasks/{task_id}/ack", json={}, token=token, retry_for=retry_for)
        return str(v["state"])

    def precommit(self, task_id: str, token: str, hash_hex: str, *, retry_for: Optional[float] = None) -> str:
        """Sends the precommit (see :func:`commitment`); returns the task's state."""
        v = self.request(
            "POST", f"/v1/tasks/{task_id}/precommit", json={"hash": hash_hex}, token=token,
            retry_for=retry_for,
        )
        return str(v["state"])

    def commit(
        self, task_id: str, token: str, output: Payload, nonce: Payload, *, retry_for: Optional[float] = None
    ) -> str:
        """Reveals the output and nonce; returns the task's state. A reveal that does
        not hash to the precommit raises
        :class:`~session_queue.errors.RevealMismatchError`."""
        body = {"output": b64encode(to_bytes(output)), "nonce": b64encode(to_bytes(nonce))}
        v = self.request("POST", f"/v1/tasks/{task_id}/commit", json=body, token=token, retry_for=retry_for)
        return str(v["state"])

    def steps(
        self,
        miner_id: str,
        token: str,
        steps: Sequence[Mapping[str, Any]],
        *,
        retry_for: Optional[float] = None,
    ) -> List[StepResult]:
        """Acks, precommits and reveals of this miner in one call (and one log entry):
        each step is ``{"task_id", "op": "ack"}``, ``{"task_id", "op": "precommit",
        "hash"}`` or ``{"task_id", "op": "commit", "output", "nonce"}`` (output and
        nonce as bytes or str; they are base64-encoded here). Steps apply in order;
        each gets its own :class:`StepResult`, so one refused step (another miner's
        task, a second precommit) does not fail the others. A malformed step fails
        the whole call (nothing written) with its typed error."""
        body = []
        for step in steps:
            wire = dict(step)
            for field in ("output", "nonce"):
                if field in wire:
                    wire[field] = b64encode(to_bytes(wire[field]))
            body.append(wire)
        v = self.request(
            "POST", f"/v1/miners/{miner_id}/steps", json={"steps": body}, token=token,
            retry_for=retry_for,
        )
        out = []
        for r in v["results"]:
            status = int(r["status"])
            error = None
            if status != 200:
                error = error_from_response(status, {"error": r.get("error") or {}})
            out.append(StepResult(str(r["task_id"]), str(r["op"]), status, r.get("state"), error))
        return out

    def drain(self, miner_id: str, token: str) -> Dict[str, Any]:
        """The miner takes no new work and leaves when its current work is done."""
        result: Dict[str, Any] = self.request("POST", f"/v1/miners/{miner_id}/drain", json={}, token=token)
        return result

    def leave(self, miner_id: str, token: str, *, retry_for: Optional[float] = None) -> None:
        """Deregisters the miner now: its unfinished slots go to other miners."""
        self.request("DELETE", f"/v1/miners/{miner_id}", token=token, retry_for=retry_for)

    # -- operator ----------------------------------------------------------------

    def cluster(self) -> Dict[str, Any]:
        """Members, leader, term and applied index of every node."""
        result: Dict[str, Any] = self.request("GET", "/v1/cluster", safe=True)
        return result

    def pool(self) -> Dict[str, Any]:
        """The node pool and its scaling signal."""
        result: Dict[str, Any] = self.request("GET", "/v1/pool", safe=True)
        return result

    def ready(self, node: Optional[str] = None) -> bool:
        """Whether a node (default: the current one) has a leader and is caught up."""
        url = node_url(node) if node else self._node()[1]
        try:
            return self._http.get(url + "/ready", timeout=self.connect_timeout).is_success
        except httpx.TransportError:
            return False

    # -- streams -----------------------------------------------------------------

    def events(
        self,
        session_id: str,
        *,
        after: Optional[str] = None,
        reconnect: bool = True,
        read_timeout: float = 60.0,
        timeout: Optional[float] = None,
    ) -> "EventStream":
        """The session's events over server-sent events; iterate it. ``after``: an
        event id to resume after. With ``reconnect`` the stream resumes (on the next
        node when one fails) from the last id it saw, with ``Last-Event-ID``.
        ``timeout``: seconds after which the iteration ends (``None``: never)."""
        from .streams import EventStream

        return EventStream(
            self, session_id, after=after, reconnect=reconnect, read_timeout=read_timeout,
            timeout=timeout,
        )

    def websocket_events(
        self,
        session_id: str,
        *,
        after: Optional[str] = None,
        reconnect: bool = True,
        open_timeout: float = 10.0,
        timeout: Optional[float] = None,
    ) -> "WebSocketEventStream":
        """The session's events over a WebSocket (``ws://`` or ``wss://`` on the
        same path, the API key in the ``Authorization`` header); iterate it or call
        ``recv``. Resumes with ``?after=<id>``. ``timeout``: seconds after which
        the iteration ends (``None``: never)."""
        from .streams import WebSocketEventStream

        return WebSocketEventStream(
            self, session_id, after=after, reconnect=reconnect, open_timeout=open_timeout,
            timeout=timeout,
        )


def task_body(spec: TaskSpec, auto_key: bool) -> Dict[str, Any]:
    """The JSON of one task of a submit; a fresh idempotency key when it has none
    and ``auto_key``."""
    body: Dict[str, Any] = {"payload": b64encode(to_bytes(spec.payload))}
    key = spec.idempotency_key
    if key is None and auto_key:
        key = uuid.uuid4().hex
    if key is not None:
        body["idempotency_key"] = key
    if spec.priority is not None:
        body["priority"] = spec.priority
    if spec.queue_timeout_ms is not None:
        body["queue_timeout_ms"] = spec.queue_timeout_ms
    return body


class _Retry:
    """The retry rules of one call (see the module documentation), shared by the
    sync and async clients: each method returns how long to wait before the next
    attempt, or raises the error when it may not be retried or time is up."""

    def __init__(self, nodes: int, safe: bool, budget: float) -> None:
        self.nodes = nodes
        self.safe = safe
        self.deadline = time.monotonic() + budget
        self.backoff = Backoff(0.05, 2.0)
        # Nodes refused since the last wait: a refused connection moves to the next
        # node at once, and waits only after every node refused.
        self.refused_in_a_row = 0

    def _within(self, wait: float, error: SessionQueueError) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 or wait > remaining:
            raise error
        return wait

    def transport_failed(self, e: httpx.TransportError, what: str) -> float:
        """No answer; the caller moves to the next node."""
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            # Not sent: nothing written.
            error: SessionQueueError = NoNodeAvailableError(f"{what}: {e!r}")
            self.refused_in_a_row += 1
            if self.refused_in_a_row < self.nodes:
                return 0.0
            self.refused_in_a_row = 0
            return self._within(self.backoff.fail(), error)
        # Sent, but no answer: the call may have been applied.
        self.refused_in_a_row = 0
        error = ConnectionLostError(f"{what}: {e!r}")
        if not self.safe:
            raise error from e
        return self._within(self.backoff.fail(), error)

    def refused(self, error: ApiError) -> Tuple[float, bool]:
        """An error answer: how long to wait, and whether to move to the next node."""
        self.refused_in_a_row = 0
        if isinstance(error, UnavailableError):
            return self._within(self.backoff.fail(), error), True
        if isinstance(error, TooManyRequestsError):
            return self._within(max(self.backoff.fail(), error.retry_after or 0.0), error), False
        if isinstance(error, OutcomeUnknownError) and self.safe:
            return self._within(self.backoff.fail(), error), True
        raise error


def _json_of(response: httpx.Response) -> Any:
    return response.json() if response.content else None


def _error_of(response: httpx.Response) -> ApiError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return error_from_response(response.status_code, body, response.headers.get("retry-after"))

