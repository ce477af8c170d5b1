"""The asyncio client, on :class:`httpx.AsyncClient`: the user's and router's side
(sessions; tasks: submit, batch, get, wait, cancel; server-sent events) with the
same failover and retry rules as :class:`~session_queue.Client`.

    async with AsyncClient(["127.0.0.1:7001", "127.0.0.1:7002"]) as client:
        session = await client.create_session(redundancy=3, quorum=2)
        task = await client.submit(session.id, b"hello")
        done = await client.wait(task.task_id)
        async for event in client.events(session.id, timeout=30):
            ...

Miners use the synchronous :class:`~session_queue.Miner`.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from typing import Any, AsyncIterator, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import httpx

from ._backoff import Backoff
from .client import (
    BatchSubmitted,
    Verify,
    WaitTimeoutError,
    _error_of,
    _json_of,
    _Retry,
    node_url,
    ssl_context,
    task_body,
)
from .errors import NoNodeAvailableError, UnavailableError
from .models import Event, Payload, Session, Submitted, Task, TaskSpec
from .streams import SseDecoder


class AsyncClient:
    """An asyncio client of one cluster; the arguments are those of
    :class:`~session_queue.Client`."""

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
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        if isinstance(nodes, str):
            nodes = [n for n in nodes.split(",") if n.strip()]
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
        self._http = httpx.AsyncClient(
            verify=self.verify,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=5.0),
            trust_env=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def _node(self) -> Tuple[int, str]:
        with self._lock:
            i = self._current % len(self.nodes)
            return i, self.nodes[i]

    def _advance(self, i: int) -> None:
        with self._lock:
            if self._current % len(self.nodes) == i:
                self._current = (i + 1) % len(self.nodes)

    def _headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        safe: bool = False,
        extra_wait: float = 0.0,
        retry_for: Optional[float] = None,
    ) -> Any:
        """One API call with failover and retries, as :meth:`Client.request`."""
        retry = _Retry(len(self.nodes), safe, self.retry_for if retry_for is None else retry_for)
        timeout = httpx.Timeout(self.timeout + extra_wait, connect=self.connect_timeout)
        while True:
            i, base = self._node()
            url = base + path
            try:
                response = await self._http.request(
                    method, url, json=json, params=params, headers=self._headers(), timeout=timeout
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
                await asyncio.sleep(wait)

    async def create_session(self, **fields: Any) -> Session:
        """Creates a session; fields by their wire names (``redundancy``, ``quorum``,
        ``tag``, ...), ``None`` ones left out."""
        body = {k: v for k, v in fields.items() if v is not None}
        v = await self.request("POST", "/v1/sessions", json=body)
        if "redundancy" not in v:
            # The node answered the id alone (it had not applied the write yet).
            return await self.get_session(str(v["id"]))
        return Session.from_json(v)

    async def get_session(self, session_id: str) -> Session:
        return Session.from_json(await self.request("GET", f"/v1/sessions/{session_id}", safe=True))

    async def close_session(self, session_id: str) -> Dict[str, Any]:
        result: Dict[str, Any] = await self.request("POST", f"/v1/sessions/{session_id}/close")
        return result

    async def submit(
        self,
        session_id: str,
        payload: Payload,
        *,
        priority: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        queue_timeout_ms: Optional[int] = None,
    ) -> Submitted:
        body = task_body(TaskSpec(payload, priority, idempotency_key, queue_timeout_ms), self.auto_idempotency_keys)
        key = body.get("idempotency_key")
        v = await self.request("POST", f"/v1/sessions/{session_id}/tasks", json=body, safe=key is not None)
        return Submitted(task_id=str(v["task_id"]), created=bool(v.get("created", True)), idempotency_key=key)

    async def submit_batch(self, session_id: str, tasks: Iterable[Union[TaskSpec, Payload]]) -> BatchSubmitted:
        bodies = [
            task_body(t if isinstance(t, TaskSpec) else TaskSpec(t), self.auto_idempotency_keys) for t in tasks
        ]
        keys = [b.get("idempotency_key") for b in bodies]
        v = await self.request(
            "POST",
            f"/v1/sessions/{session_id}/tasks:batch",
            json={"tasks": bodies},
            safe=all(k is not None for k in keys),
        )
        return BatchSubmitted(
            task_ids=[str(t) for t in v["task_ids"]], created=int(v.get("created", len(bodies))), idempotency_keys=keys
        )

    async def get_task(self, task_id: str, *, linearizable: bool = False) -> Task:
        params = {"consistency": "linearizable"} if linearizable else None
        return Task.from_json(await self.request("GET", f"/v1/tasks/{task_id}", params=params, safe=True))

    async def wait(self, task_id: str, timeout: float = 60.0, *, poll: float = 30.0) -> Task:
        """Long-polls until the task is finished; :class:`WaitTimeoutError` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            hold = max(0.0, min(poll, deadline - time.monotonic()))
            v = await self.request(
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

    async def cancel(self, task_id: str) -> str:
        v = await self.request("POST", f"/v1/tasks/{task_id}/cancel")
        return str(v["state"])

    async def cluster(self) -> Dict[str, Any]:
        result: Dict[str, Any] = await self.request("GET", "/v1/cluster", safe=True)
        return result

    async def events(
        self,
        session_id: str,
        *,
        after: Optional[str] = None,
        reconnect: bool = True,
        read_timeout: float = 60.0,
        timeout: Optional[float] = None,
        on_open: Optional[Callable[[], None]] = None,
    ) -> AsyncIterator[Event]:
        """The session's server-sent events, resumed (on the next node when one
        fails) after the last id seen; ends after ``timeout`` seconds if given.
        ``on_open`` is called each time a node accepted the stream: every event
        applied after that is in it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_id = after
        backoff = Backoff(0.1, 5.0)

        def left() -> float:
            if deadline is None:
                return read_timeout
            return max(0.05, min(read_timeout, deadline - time.monotonic()))

        def expired() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        while not expired():
            i, base = self._node()
            headers = self._headers()
            headers["Accept"] = "text/event-stream"
            if last_id:
                headers["Last-Event-ID"] = last_id
            quiet = False
            try:
                async with self._http.stream(
                    "GET",
                    f"{base}/v1/sessions/{session_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(left(), connect=self.connect_timeout),
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        error = _error_of(response)
                        if not (isinstance(error, UnavailableError) and reconnect):
                            raise error
                    else:
                        if on_open is not None:
                            on_open()
                        decoder = SseDecoder()
                        async for line in response.aiter_lines():
                            if expired():
                                return
                            event = decoder.feed(line)
                            if event is None:
                                continue
                            backoff.reset()
                            if event.id:
                                last_id = event.id
                            yield event
            except httpx.TransportError as e:
                if expired():
                    return
                if not reconnect:
                    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
                        raise NoNodeAvailableError(f"{base}: {e!r}") from e
                    raise
                quiet = isinstance(e, httpx.ReadTimeout)
            if expired() or not reconnect:
                return
            if not quiet:
                self._advance(i)
                await asyncio.sleep(min(backoff.fail(), left()))
