"""Parts of the client that need no cluster: encodings, error mapping, SSE parsing,
the miner's step rules, and the retry rules against a scripted transport."""

from __future__ import annotations

import hashlib
import json
from typing import List

import httpx
import pytest

from session_queue import (
    BadRequestError,
    Client,
    ConflictError,
    ConnectionLostError,
    IdempotencyConflictError,
    MinerGoneError,
    NoNodeAvailableError,
    NotFoundError,
    OutcomeUnknownError,
    OverloadedError,
    QueueFullError,
    RevealMismatchError,
    StateFullError,
    UnavailableError,
    commitment,
)
from session_queue.errors import error_from_response
from session_queue.miner import next_step
from session_queue.streams import parse_sse


def test_commitment_is_sha256_of_output_then_nonce() -> None:
    # The README's example: output "4", nonce "nonce-1".
    assert commitment(b"4", b"nonce-1") == hashlib.sha256(b"4nonce-1").hexdigest()
    assert commitment("4", "nonce-1") == commitment(b"4", b"nonce-1")
    assert commitment(b"ab", b"c") == commitment(b"a", b"bc")  # plain concatenation


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (400, "invalid", BadRequestError),
        (404, "not_found", NotFoundError),
        (409, "conflict", ConflictError),
        (409, "idempotency_conflict", IdempotencyConflictError),
        (422, "reveal_mismatch", RevealMismatchError),
        (429, "queue_full", QueueFullError),
        (429, "overloaded", OverloadedError),
        (429, "state_full", StateFullError),
        (503, "unavailable", UnavailableError),
        (503, "outcome_unknown", OutcomeUnknownError),
    ],
)
def test_error_codes_map_to_classes(status: int, code: str, cls: type) -> None:
    e = error_from_response(status, {"error": {"code": code, "message": "m"}}, "2")
    assert type(e) is cls
    assert (e.status, e.code, e.message, e.retry_after) == (status, code, "m", 2.0)
    assert e.maybe_applied == (code == "outcome_unknown")


def test_gone_miner_and_unknown_codes() -> None:
    gone = error_from_response(409, {"error": {"code": "conflict", "message": "miner m-3 is gone (missed heartbeats or left); register again"}})
    assert isinstance(gone, MinerGoneError) and isinstance(gone, ConflictError)
    # A code this version does not know falls back on its status.
    e = error_from_response(429, {"error": {"code": "slow_down", "message": "x"}})
    assert e.status == 429 and e.code == "slow_down" and not isinstance(e, QueueFullError)
    # A body that is not the API's JSON.
    e = error_from_response(502, "Bad Gateway")
    assert e.status == 502 and e.message == "Bad Gateway"


def test_sse_parsing_follows_the_event_stream_format() -> None:
    lines = [
        ": keep-alive",
        "event: transition",
        "id: 7-0",
        'data: {"task_id": "t-1",',
        'data:  "state": "acked"}',
        "",
        "event: lagged",
        'data: {"missed": 3}',
        "",
        "data: not json",
        "",
        "id: 9-1",
        "",  # an id alone dispatches nothing, but carries over
        "event: resync",
        'data: {"index": 12}',
        "",
    ]
    events = list(parse_sse(lines))
    assert [(e.event, e.id) for e in events] == [
        ("transition", "7-0"),
        ("lagged", "7-0"),
        ("message", "7-0"),
        ("resync", "9-1"),
    ]
    assert events[0].data == {"task_id": "t-1", "state": "acked"}
    assert events[0].task_id == "t-1" and events[0].state == "acked"
    assert events[2].data == {"text": "not json"}


@pytest.mark.parametrize(
    "slot,task,secret,step",
    [
        ("assigned", "queued", False, "ack"),
        ("acked", "queued", True, None),  # others have not acked: the phase is not open
        ("acked", "acked", False, "precommit"),
        ("precommitted", "acked", True, None),  # others have not precommitted
        ("precommitted", "precommitted", True, "commit"),
        ("precommitted", "committed", True, "commit"),
        ("precommitted", "precommitted", False, None),  # the secret is lost: nothing to reveal
        ("committed", "committed", True, None),
        ("rejected", "committed", True, None),
    ],
)
def test_miner_steps_open_with_the_phase(slot: str, task: str, secret: bool, step: str) -> None:
    assert next_step(slot, task, secret) == step


def scripted(answers: List[object], seen: List[httpx.Request]) -> httpx.MockTransport:
    """A transport answering each request with the next scripted answer: a status
    and error code, a JSON body (200), or an exception."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, tuple):
            status, code = answer
            return httpx.Response(status, json={"error": {"code": code, "message": code}}, headers={"Retry-After": "0"})
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handle)


def test_connection_refused_and_unavailable_fail_over_to_the_next_node() -> None:
    seen: List[httpx.Request] = []
    answers: List[object] = [
        httpx.ConnectError("refused"),
        (503, "unavailable"),
        {"task_id": "t-1", "created": True},
    ]
    with Client(["a:1", "b:2", "c:3"], transport=scripted(answers, seen), retry_for=10) as c:
        s = c.submit("s-1", b"x")
    assert s.task_id == "t-1"
    assert [r.url.host for r in seen] == ["a", "b", "c"]
    # Every attempt carried the same idempotency key.
    keys = {json.loads(r.content)["idempotency_key"] for r in seen}
    assert len(keys) == 1 and s.idempotency_key in keys


def test_outcome_unknown_is_retried_only_when_safe() -> None:
    seen: List[httpx.Request] = []
    answers: List[object] = [(503, "outcome_unknown"), {"task_id": "t-2", "created": False}]
    with Client(["a:1", "b:2"], transport=scripted(answers, seen), retry_for=10) as c:
        assert c.submit("s-1", b"x").task_id == "t-2"
    # Without a key, a submit is not safe to repeat.
    answers = [(503, "outcome_unknown")]
    with Client(["a:1"], transport=scripted(answers, seen), auto_idempotency_keys=False) as c:
        with pytest.raises(OutcomeUnknownError) as info:
            c.submit("s-1", b"x")
        assert info.value.maybe_applied
    # Nor is a cancel; a lost connection likewise.
    answers = [httpx.ReadError("reset")]
    with Client(["a:1"], transport=scripted(answers, seen)) as c:
        with pytest.raises(ConnectionLostError):
            c.cancel("t-1")


def test_429_is_retried_after_retry_after_and_4xx_is_not() -> None:
    seen: List[httpx.Request] = []
    answers: List[object] = [(429, "queue_full"), (429, "overloaded"), {"task_ids": ["t-1", "t-2"], "created": 2}]
    with Client(["a:1"], transport=scripted(answers, seen), retry_for=10) as c:
        assert c.submit_batch("s-1", [b"x", "y"]).task_ids == ["t-1", "t-2"]
    assert len(seen) == 3
    answers = [(409, "idempotency_conflict")]
    with Client(["a:1"], transport=scripted(answers, seen)) as c:
        with pytest.raises(IdempotencyConflictError):
            c.submit("s-1", b"x", idempotency_key="k")
    # Out of time: the last error is raised.
    answers = [httpx.ConnectError("refused")] * 2
    with Client(["a:1", "b:2"], transport=scripted(answers, seen), retry_for=0) as c:
        with pytest.raises(NoNodeAvailableError):
            c.get_task("t-1")


def test_async_client_follows_the_same_rules() -> None:
    import asyncio

    from session_queue import AsyncClient

    seen: List[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "a":
            raise httpx.ConnectError("refused")
        if len(seen) == 2:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "no leader"}})
        return httpx.Response(201, json={"task_id": "t-9", "created": True})

    async def main() -> None:
        async with AsyncClient(["a:1", "b:2", "c:3"], transport=httpx.MockTransport(handle), retry_for=10) as c:
            s = await c.submit("s-1", b"x")
            assert s.task_id == "t-9" and s.idempotency_key
        async with AsyncClient(["b:2"], transport=scripted([(404, "not_found")], seen)) as c:
            with pytest.raises(NotFoundError):
                await c.get_task("t-1")

    asyncio.run(main())
    assert [r.url.host for r in seen[:3]] == ["a", "b", "c"]
