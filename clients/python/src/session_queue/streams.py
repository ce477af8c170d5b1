"""A session's event stream, over server-sent events (httpx streaming) or a WebSocket
(:mod:`websockets`).

Both yield :class:`~session_queue.models.Event` and remember the id of the last
event seen (:attr:`last_event_id`). When the connection breaks they reconnect, to
the next node when one fails, and resume after that id: SSE with the standard
``Last-Event-ID`` header, the WebSocket with ``?after=<id>``. A node whose window no
longer covers the id answers one ``resync`` event: re-read the tasks you follow.

Iteration blocks while no event comes; ``timeout`` (seconds) ends it quietly, and
:meth:`close` (from any thread, for the WebSocket; from the iterating thread, or by
leaving a ``with`` block, for SSE) stops it too.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional

import httpx

from ._backoff import Backoff
from .errors import (
    ApiError,
    NoNodeAvailableError,
    SessionQueueError,
    UnavailableError,
    error_from_response,
)
from .models import Event

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client


class WebSocketUnsupportedError(SessionQueueError):
    """The node does not speak WebSocket on the events route (it answered the upgrade
    with ``status`` instead of 101, e.g. 200 with a server-sent event stream)."""

    def __init__(self, status: int, content_type: str) -> None:
        super().__init__(
            f"the node answered the WebSocket upgrade with {status} {content_type or ''}".rstrip()
        )
        self.status = status
        self.content_type = content_type


class SseDecoder:
    """Turns the lines of a server-sent event stream (without their ends) into
    events, one line at a time, following the WHATWG rules: ``field: value`` lines
    build an event, a blank line dispatches it, lines starting with ``:`` are
    comments (keep-alives), and the last ``id`` carries over to later events.
    ``data`` that is not a JSON object comes as ``{"text": ...}`` (not JSON) or
    ``{"value": ...}``."""

    def __init__(self) -> None:
        self.event = ""
        self.data: List[str] = []
        self.last_id: Optional[str] = None

    def feed(self, line: str) -> Optional[Event]:
        if line == "":
            event, data = self.event, self.data
            self.event, self.data = "", []
            if not data:
                return None
            text = "\n".join(data)
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = {"text": text}
            if not isinstance(parsed, dict):
                parsed = {"value": parsed}
            return Event(event=event or "message", data=parsed, id=self.last_id)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a server-sent event stream, from its lines (see
    :class:`SseDecoder`)."""
    decoder = SseDecoder()
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event


class _Lines:
    """Lines of a streamed response, noting each (keep-alives too) so the stream can
    check its deadline between them."""

    def __init__(self, response: httpx.Response, stream: "EventStream") -> None:
        self.response = response
        self.stream = stream

    def __iter__(self) -> Iterator[str]:
        for line in self.response.iter_lines():
            if self.stream._expired():
                return
            yield line


class EventStream:
    """A session's events over server-sent events; iterate it (once)."""

    def __init__(
        self,
        client: "Client",
        session_id: str,
        *,
        after: Optional[str] = None,
        reconnect: bool = True,
        read_timeout: float = 60.0,
        timeout: Optional[float] = None,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.last_event_id = after
        self.reconnect = reconnect
        self.read_timeout = read_timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._closed = False
        self._response: Optional[httpx.Response] = None
        #: Connections opened (the first and every reconnection).
        self.connections = 0

    def _expired(self) -> bool:
        return self._closed or (self._deadline is not None and time.monotonic() >= self._deadline)

    def _remaining(self) -> float:
        if self._deadline is None:
            return self.read_timeout
        return max(0.05, min(self.read_timeout, self._deadline - time.monotonic()))

    def _open(self) -> httpx.Response:
        i, base = self.client._node()
        headers = self.client._headers(None)
        headers["Accept"] = "text/event-stream"
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        request = self.client._http.build_request(
            "GET",
            f"{base}/v1/sessions/{self.session_id}/events",
            headers=headers,
            timeout=httpx.Timeout(self._remaining(), connect=self.client.connect_timeout),
        )
        try:
            response = self.client._http.send(request, stream=True)
        except httpx.TransportError as e:
            self.client._advance(i)
            raise NoNodeAvailableError(f"GET {request.url}: {e!r}") from e
        if not response.is_success:
            try:
                response.read()
                try:
                    body: Any = response.json()
                except ValueError:
                    body = response.text
            finally:
                response.close()
            error = error_from_response(response.status_code, body, response.headers.get("retry-after"))
            if isinstance(error, UnavailableError):
                self.client._advance(i)
            raise error
        self.connections += 1
        return response

    def open(self) -> "EventStream":
        """Connects now (iteration connects when needed), so that every event
        applied after this returns is in the stream. Raises a typed API error when
        the node refuses (401, 404), or
        :class:`~session_queue.errors.NoNodeAvailableError`."""
        if self._response is None:
            self._response = self._open()
        return self

    def __iter__(self) -> Iterator[Event]:
        backoff = Backoff(0.1, 5.0)
        while not self._expired():
            response = self._response
            if response is None:
                try:
                    response = self._open()
                except (NoNodeAvailableError, UnavailableError):
                    if not self.reconnect:
                        raise
                    time.sleep(min(backoff.fail(), self._remaining()))
                    continue
            self._response = response
            quiet = False
            try:
                for event in parse_sse(_Lines(response, self)):
                    backoff.reset()
                    if event.id:
                        self.last_event_id = event.id
                    yield event
                    if self._expired():
                        return
            except httpx.TransportError as e:
                if self._expired():
                    return
                if not self.reconnect:
                    raise
                # A read timeout is only a quiet stream; anything else may be the
                # node's fault: then resume on the next one.
                quiet = isinstance(e, httpx.ReadTimeout)
            finally:
                response.close()
                self._response = None
            if self._expired() or not self.reconnect:
                return
            if not quiet:
                self.client._advance(self.client._node()[0])
                time.sleep(min(backoff.fail(), self._remaining()))

    def close(self) -> None:
        """Stops the stream (the iteration ends at its next event or keep-alive)."""
        self._closed = True

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        response = self._response
        if response is not None:
            response.close()


class WebSocketEventStream:
    """A session's events over a WebSocket; iterate it (once), or call :meth:`recv`."""

    def __init__(
        self,
        client: "Client",
        session_id: str,
        *,
        after: Optional[str] = None,
        reconnect: bool = True,
        open_timeout: float = 10.0,
        timeout: Optional[float] = None,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.last_event_id = after
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._closed = False
        self._ws: Any = None
        self.connections = 0
        self._backoff = Backoff(0.1, 5.0)

    def _url(self, base: str) -> str:
        url = "ws" + base[len("http"):] if base.startswith("http") else base
        url += f"/v1/sessions/{self.session_id}/events"
        if self.last_event_id:
            url += "?" + httpx.QueryParams({"after": self.last_event_id}).__str__()
        return url

    def _ssl(self) -> Optional[ssl.SSLContext]:
        verify = self.client.verify
        if isinstance(verify, ssl.SSLContext):
            return verify
        if verify is False:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context()

    def connect(self) -> None:
        """Opens the connection now (iteration opens it when needed): raises
        :class:`WebSocketUnsupportedError` when the node has no WebSocket here, a
        typed API error when it refuses (401, 404), or
        :class:`~session_queue.errors.NoNodeAvailableError`."""
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect

        i, base = self.client._node()
        url = self._url(base)
        try:
            ws = connect(
                url,
                additional_headers=self.client._headers(None),
                ssl=self._ssl() if url.startswith("wss://") else None,
                open_timeout=self.open_timeout,
                proxy=None,
            )
            # Held as a context manager (closed by close()): websockets 15+ warns
            # about a connection used otherwise.
            self._ws = ws.__enter__()
        except InvalidStatus as e:
            status = e.response.status_code
            content_type = e.response.headers.get("Content-Type", "") or ""
            body: Any = e.response.body or b""
            try:
                body = json.loads(body)
            except ValueError:
                body = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            has_code = isinstance(body, dict) and isinstance(body.get("error"), dict)
            if 200 <= status < 300 or status in (405, 426) or (400 <= status < 500 and not has_code):
                raise WebSocketUnsupportedError(status, content_type) from e
            error: ApiError = error_from_response(status, body, e.response.headers.get("Retry-After"))
            if isinstance(error, UnavailableError):
                self.client._advance(i)
            raise error from e
        except (OSError, InvalidHandshake, TimeoutError) as e:
            # A node without WebSocket here may answer the upgrade with an endless
            # event stream, which the handshake waits out: ask it plainly.
            unsupported = self._probe(base)
            if unsupported is not None:
                raise unsupported from e
            self.client._advance(i)
            raise NoNodeAvailableError(f"{url}: {e!r}") from e
        self.connections += 1

    def _probe(self, base: str) -> Optional[WebSocketUnsupportedError]:
        """Whether the node answers an upgrade request on the events route with
        something else than 101 (e.g. 200 and an event stream)."""
        headers = self.client._headers(None)
        headers.update(
            {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode("ascii"),
            }
        )
        try:
            with self.client._http.stream(
                "GET",
                f"{base}/v1/sessions/{self.session_id}/events",
                headers=headers,
                timeout=httpx.Timeout(self.open_timeout, connect=self.client.connect_timeout),
            ) as response:
                status = response.status_code
                content_type = response.headers.get("content-type", "")
        except httpx.TransportError:
            return None
        if 200 <= status < 300 or status in (405, 426):
            return WebSocketUnsupportedError(status, content_type)
        return None

    def _expired(self) -> bool:
        return self._closed or (self._deadline is not None and time.monotonic() >= self._deadline)

    def recv(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, or ``None`` when ``timeout`` seconds (or the stream's own
        deadline) pass first, or the stream was closed."""
        from websockets.exceptions import ConnectionClosed

        end = None if timeout is None else time.monotonic() + timeout
        while not self._expired():
            left: Optional[float] = None
            if end is not None:
                left = end - time.monotonic()
            if self._deadline is not None:
                d = self._deadline - time.monotonic()
                left = d if left is None else min(left, d)
            if left is not None and left <= 0:
                return None
            if self._ws is None:
                try:
                    self.connect()
                except (NoNodeAvailableError, UnavailableError):
                    if not self.reconnect:
                        raise
                    time.sleep(min(self._backoff.fail(), left if left is not None else 5.0))
                    continue
            try:
                message = self._ws.recv(timeout=left)
            except TimeoutError:
                return None
            except ConnectionClosed:
                self._ws = None
                if self._expired() or not self.reconnect:
                    return None
                self.client._advance(self.client._node()[0])
                time.sleep(min(self._backoff.fail(), left if left is not None else 5.0))
                continue
            self._backoff.reset()
            event = _ws_event(message)
            if event is None:
                continue
            if event.id:
                self.last_event_id = event.id
            return event
        return None

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.recv()
            if event is None:
                return
            yield event

    def close(self) -> None:
        """Closes the connection; safe from any thread."""
        self._closed = True
        ws = self._ws
        if ws is not None:
            ws.close()

    def __enter__(self) -> "WebSocketEventStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _ws_event(message: Any) -> Optional[Event]:
    """An event from a WebSocket message ``{"id", "event", "data"}``."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    try:
        v = json.loads(message)
    except ValueError:
        return None
    if not isinstance(v, dict) or "event" not in v:
        return None
    raw = v.get("data")
    data: Dict[str, Any] = raw if isinstance(raw, dict) else {"value": raw}
    ident = v.get("id")
    return Event(event=str(v["event"]), data=data, id=None if ident is None else str(ident))
