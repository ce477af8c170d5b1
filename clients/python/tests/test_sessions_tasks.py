"""Sessions and tasks against the real cluster: create, read, close; submit, batch,
get, wait, cancel; and error answers as typed exceptions."""

from __future__ import annotations

import uuid

import pytest

from session_queue import (
    BadRequestError,
    Client,
    ConflictError,
    IdempotencyConflictError,
    NotFoundError,
    PayloadTooLargeError,
    TaskSpec,
    UnauthorizedError,
    WaitTimeoutError,
)

from conftest import Cluster


def test_session_create_read_close(cluster: Cluster, client: Client, tag: str) -> None:
    s = client.create_session(redundancy=3, quorum=2, tag=tag, max_nodes=5, owner="py")
    assert s.id and s.state == "open"
    assert (s.redundancy, s.quorum, s.tag, s.max_nodes) == (3, 2, tag, 5)
    # Read through every node: an id one node returned is found on every other.
    for node in cluster.nodes:
        with Client([node], api_key=cluster.api_key) as c:
            got = c.get_session(s.id)
            assert (got.id, got.redundancy, got.quorum, got.tag) == (s.id, 3, 2, tag)
    closed = client.close_session(s.id)
    assert closed["state"] == "closed"
    assert client.get_session(s.id).state == "closed"
    # A closed session takes no task.
    with pytest.raises(ConflictError) as info:
        client.submit(s.id, b"late")
    assert info.value.status == 409 and info.value.code == "conflict"


def test_defaults_and_extra_fields(client: Client) -> None:
    s = client.create_session(queue_timeout_ms=60_000)
    # Closed at once: a session without a tag would reserve other tests' miners.
    client.close_session(s.id)
    assert (s.redundancy, s.quorum, s.tag) == (1, 1, None)
    assert s.raw["queue_timeout_ms"] == 60_000


def test_errors_are_typed(cluster: Cluster, client: Client) -> None:
    with pytest.raises(NotFoundError) as info:
        client.get_session("s-99999999")
    assert (info.value.status, info.value.code) == (404, "not_found")
    with pytest.raises(NotFoundError):
        client.get_task("t-99999999")
    with pytest.raises(BadRequestError) as bad:
        client.create_session(redundancy=9)
    assert (bad.value.status, bad.value.code) == (400, "invalid")
    # Request bodies refuse unknown fields.
    with pytest.raises(BadRequestError):
        client.create_session(no_such_field=1)
    # No key, a wrong key: 401.
    with cluster.client(api_key=None) as anonymous:
        with pytest.raises(UnauthorizedError) as unauth:
            anonymous.create_session()
        assert unauth.value.status == 401
    with cluster.client(api_key="wrong") as wrong:
        with pytest.raises(UnauthorizedError):
            wrong.get_session("s-1")
    # Miner registration takes the miner key (or the API key), not another.
    with pytest.raises(UnauthorizedError):
        client.register_miner("m", miner_key="not-the-miner-key")


def test_submit_is_idempotent_by_key(client: Client, tag: str) -> None:
    s = client.create_session(tag=tag)
    key = "k-" + uuid.uuid4().hex
    first = client.submit(s.id, b"hello", idempotency_key=key, priority=3)
    assert first.created and first.idempotency_key == key
    again = client.submit(s.id, b"hello", idempotency_key=key, priority=3)
    assert (again.task_id, again.created) == (first.task_id, False)
    with pytest.raises(IdempotencyConflictError) as info:
        client.submit(s.id, b"another payload", idempotency_key=key, priority=3)
    assert (info.value.status, info.value.code) == (409, "idempotency_conflict")
    task = client.get_task(first.task_id)
    assert (task.session_id, task.state, task.priority, task.idempotency_key) == (s.id, "queued", 3, key)


def test_submits_carry_a_key_by_default(cluster: Cluster, client: Client, tag: str) -> None:
    s = client.create_session(tag=tag)
    a = client.submit(s.id, "text payloads are UTF-8")
    b = client.submit(s.id, "text payloads are UTF-8")
    assert a.idempotency_key and b.idempotency_key and a.idempotency_key != b.idempotency_key
    assert a.task_id != b.task_id
    assert client.get_task(a.task_id, linearizable=True).idempotency_key == a.idempotency_key
    with cluster.client(auto_idempotency_keys=False) as bare:
        c = bare.submit(s.id, b"no key")
        assert c.idempotency_key is None
        assert client.get_task(c.task_id).idempotency_key is None


def test_batch_submit_returns_ids_in_order(client: Client, tag: str) -> None:
    s = client.create_session(tag=tag)
    batch = client.submit_batch(
        s.id,
        [b"one", "two", TaskSpec(b"three", priority=7), TaskSpec(b"four", idempotency_key="four-" + uuid.uuid4().hex)],
    )
    assert len(batch.task_ids) == 4 and len(set(batch.task_ids)) == 4 and batch.created == 4
    priorities = [client.get_task(t, linearizable=True).priority for t in batch.task_ids]
    assert priorities[2] == 7
    # The same batch again (same keys) creates nothing and names the same tasks.
    specs = [TaskSpec(b"x%d" % i, idempotency_key=k) for i, k in enumerate(batch.idempotency_keys)]
    with pytest.raises(IdempotencyConflictError):
        client.submit_batch(s.id, specs)  # other payloads under the same keys
    bodies = [b"one", b"two", b"three", b"four"]
    same = [
        TaskSpec(p, priority=7 if i == 2 else None, idempotency_key=k)
        for i, (p, k) in enumerate(zip(bodies, batch.idempotency_keys))
    ]
    again = client.submit_batch(s.id, same)
    assert again.task_ids == batch.task_ids and again.created == 0
    with pytest.raises(BadRequestError):
        client.submit_batch(s.id, [])


def test_wait_cancel(client: Client, tag: str) -> None:
    # A tag no miner serves: the task stays queued.
    s = client.create_session(tag=tag)
    t = client.submit(s.id, b"nobody serves this").task_id
    with pytest.raises(WaitTimeoutError) as info:
        client.wait(t, timeout=0.5)
    assert info.value.task.state == "queued" and info.value.task.id == t
    assert client.cancel(t) == "cancelled"
    done = client.wait(t, timeout=10)
    assert done.state == "cancelled" and done.done and done.result is None
    # A finished task takes no more writes.
    with pytest.raises(ConflictError):
        client.cancel(t)
    with pytest.raises(NotFoundError):
        client.cancel("t-99999999")


def test_payload_over_the_limit_is_413(client: Client, tag: str) -> None:
    s = client.create_session(tag=tag)
    with pytest.raises(PayloadTooLargeError) as info:
        client.submit(s.id, b"x" * ((1 << 20) + 1))
    assert (info.value.status, info.value.code) == (413, "too_large")
