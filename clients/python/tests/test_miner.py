"""Miners against the real cluster: the Miner helper drives tasks through the whole
lifecycle with k miners and a quorum, and the raw miner calls are checked one by one
(commit-reveal, refusals, a gone miner)."""

from __future__ import annotations

import os
import time
from typing import List

import pytest

from session_queue import (
    Client,
    ConflictError,
    ForbiddenError,
    Miner,
    BadRequestError,
    MinerGoneError,
    RevealMismatchError,
    commitment,
)

from conftest import Cluster


def upper(payload: bytes) -> bytes:
    return payload.upper()


def test_full_lifecycle_with_k_miners(cluster: Cluster, client: Client, tag: str) -> None:
    s = client.create_session(redundancy=3, quorum=2, tag=tag, ack_timeout_ms=10_000)
    # Each miner talks to the cluster through another first node.
    miners = [
        Miner(
            Client(cluster.nodes[i:] + cluster.nodes[:i], api_key=cluster.api_key),
            upper,
            name=f"py-{i}",
            capacity=2,
            tags=[tag],
            miner_key=cluster.miner_key,
        )
        for i in range(3)
    ]
    for m in miners:
        m.start()
    try:
        payloads = [f"task number {i}".encode() for i in range(4)]
        ids = client.submit_batch(s.id, payloads).task_ids
        ids.append(client.submit(s.id, b"one more").task_id)
        payloads.append(b"one more")
        for task_id, payload in zip(ids, payloads):
            task = client.wait(task_id, timeout=120)
            assert task.state == "completed", (task, cluster.logs())
            assert task.result == payload.upper()
            revealed = [a for a in task.assignments if a.state == "committed"]
            assert len(revealed) >= 2, task.assignments
            states = [h["state"] for h in task.history]
            for step in ("queued", "acked", "precommitted", "committed", "completed"):
                assert step in states, states
            assert states.index("precommitted") < states.index("committed") < states.index("completed")
    finally:
        for m in miners:
            m.stop()
    assert all(m.gone is None and not m.running for m in miners)
    assert sum(m.stats.reveals for m in miners) >= 2 * len(ids)
    assert sum(m.stats.acks for m in miners) >= 3 * len(ids)


def test_miner_calls_one_by_one(cluster: Cluster, client: Client, tag: str) -> None:
    """Register, long-poll, ack, precommit, reveal by hand, and the refusals the
    protocol gives: a precommit before the phase opens, a reveal before it closes,
    a reveal that does not match its precommit, another miner's task."""
    s = client.create_session(redundancy=2, quorum=2, tag=tag)
    regs = [
        client.register_miner(f"hand-{i}", capacity=1, tags=[tag], miner_key=cluster.miner_key)
        for i in range(2)
    ]
    outsider = client.register_miner("outsider", tags=["other-" + tag], miner_key=cluster.miner_key)
    task_id = client.submit(s.id, b"2+2").task_id
    lists = [client.assignments(r.miner_id, r.token, wait_ms=20_000) for r in regs]
    for r, listed in zip(regs, lists):
        assert [a.task_id for a in listed.assignments] == [task_id], listed
        a = listed.assignments[0]
        assert (a.payload, a.state, a.session_id) == (b"2+2", "assigned", s.id)
        assert listed.applied_index > 0
    # Nothing to wait for after the list: with after=, the poll holds until a change.
    # Another miner's task: 403 or 409, never a change.
    with pytest.raises((ForbiddenError, ConflictError)):
        client.ack(task_id, outsider.token)
    # The first ack: the phase is not open yet (the other miner has not acked).
    assert client.ack(task_id, regs[0].token) == "queued"
    with pytest.raises(ConflictError):
        client.precommit(task_id, regs[0].token, commitment(b"4", b"n0"))
    assert client.ack(task_id, regs[1].token) == "acked"
    nonces = [os.urandom(16), os.urandom(16)]
    assert client.precommit(task_id, regs[0].token, commitment(b"4", nonces[0])) == "acked"
    # A reveal before every miner precommitted is refused (commit-reveal).
    with pytest.raises(ConflictError):
        client.commit(task_id, regs[0].token, b"4", nonces[0])
    # A second precommit is refused too.
    with pytest.raises(ConflictError):
        client.precommit(task_id, regs[0].token, commitment(b"5", nonces[0]))
    assert client.precommit(task_id, regs[1].token, commitment(b"4", nonces[1])) == "precommitted"
    assert client.commit(task_id, regs[0].token, b"4", nonces[0]) == "committed"
    # The second miner lies about its output: 422, and the task cannot complete.
    with pytest.raises(RevealMismatchError) as info:
        client.commit(task_id, regs[1].token, b"5", nonces[1])
    assert (info.value.status, info.value.code) == (422, "reveal_mismatch")
    task = client.get_task(task_id, linearizable=True)
    assert {a.miner_id: a.state for a in task.assignments if a.miner_id == regs[1].miner_id} == {
        regs[1].miner_id: "rejected"
    }
    assert task.state != "completed"
    # Heartbeats answer the miner, with its heartbeat timeout.
    hb = client.heartbeat(regs[0].miner_id, regs[0].token)
    assert hb["id"] == regs[0].miner_id and hb["heartbeat_timeout_ms"] > 0
    # A miner acts only as itself.
    with pytest.raises(ForbiddenError):
        client.heartbeat(regs[1].miner_id, regs[0].token)
    client.close_session(s.id)
    for r in regs + [outsider]:
        client.leave(r.miner_id, r.token)
    with pytest.raises(MinerGoneError):
        client.assignments(regs[0].miner_id, regs[0].token)


def test_steps_in_one_call(cluster: Cluster, client: Client, tag: str) -> None:
    """A miner acks, precommits and reveals three tasks through ``steps``, one call
    per round, with a refused step in each: another miner's task, a second
    precommit, a reveal that does not match. The others are done all the same."""
    s = client.create_session(redundancy=1, tag=tag)
    me = client.register_miner("stepper", capacity=3, tags=[tag], miner_key=cluster.miner_key)
    other = client.register_miner("other", capacity=1, tags=["other-" + tag], miner_key=cluster.miner_key)
    s2 = client.create_session(redundancy=1, tag="other-" + tag)
    ids = client.submit_batch(s.id, [b"a", b"b", b"c"]).task_ids
    foreign = client.submit(s2.id, b"not yours").task_id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = client.assignments(me.miner_id, me.token, wait_ms=5_000)
        if len(listed.assignments) == 3:
            break
    assert sorted(a.task_id for a in listed.assignments) == sorted(ids)
    # Malformed: the whole call is refused, nothing written.
    with pytest.raises(BadRequestError):
        client.steps(me.miner_id, me.token, [{"task_id": ids[0], "op": "ack"}, {"task_id": ids[1], "op": "precommit"}])
    assert client.get_task(ids[0], linearizable=True).state == "queued"
    acks = client.steps(me.miner_id, me.token, [{"task_id": t, "op": "ack"} for t in ids + [foreign]])
    assert [r.ok for r in acks] == [True, True, True, False], acks
    assert isinstance(acks[3].error, ConflictError) and acks[3].task_id == foreign
    nonces = [os.urandom(16) for _ in ids]
    pre = [{"task_id": t, "op": "precommit", "hash": commitment(t.encode(), n)} for t, n in zip(ids, nonces)]
    pre.append({"task_id": ids[0], "op": "precommit", "hash": commitment(b"x", nonces[0])})
    done = client.steps(me.miner_id, me.token, pre)
    assert [r.state for r in done[:3]] == ["precommitted"] * 3, done
    assert isinstance(done[3].error, ConflictError) and done[3].status == 409
    reveals = [{"task_id": t, "op": "commit", "output": t.encode(), "nonce": n} for t, n in zip(ids, nonces)]
    reveals[2]["output"] = b"a lie"
    done = client.steps(me.miner_id, me.token, reveals)
    assert [r.state for r in done[:2]] == ["completed", "completed"], done
    assert isinstance(done[2].error, RevealMismatchError) and done[2].status == 422
    for t in ids[:2]:
        task = client.get_task(t, linearizable=True)
        assert task.state == "completed" and task.result == t.encode()
    rejected = client.get_task(ids[2], linearizable=True)
    assert "rejected" in [a.state for a in rejected.assignments if a.miner_id == me.miner_id], rejected
    # A miner steps only as itself.
    with pytest.raises(ForbiddenError):
        client.steps(other.miner_id, me.token, [{"task_id": foreign, "op": "ack"}])
    for r in (me, other):
        client.leave(r.miner_id, r.token)


def test_miner_stops_when_declared_gone(cluster: Cluster, tag: str) -> None:
    with cluster.client() as c:
        m = Miner(c, upper, tags=[tag], miner_key=cluster.miner_key, poll_wait_ms=30_000)
        m.start()
        assert m.id and m.token and m.running
        # Someone else removes it (as a missed heartbeat would): it stops by itself.
        c.leave(m.id, m.token)
        assert m.join(60), "the miner did not stop when told it is gone"
        assert m.gone is not None and ("gone" in m.gone or "401" in m.gone)


def test_failing_work_leaves_the_slot_to_another_miner(cluster: Cluster, client: Client, tag: str) -> None:
    """A miner whose function raises precommits nothing; its slot times out and the
    task is served by a healthy miner."""
    s = client.create_session(redundancy=1, tag=tag, ack_timeout_ms=2_000, precommit_timeout_ms=2_000)
    broken_calls: List[bytes] = []

    def broken(payload: bytes) -> bytes:
        broken_calls.append(payload)
        raise RuntimeError("model crashed")

    with cluster.client() as c:
        bad = Miner(c, broken, name="broken", tags=[tag], miner_key=cluster.miner_key).start()
        try:
            task_id = client.submit(s.id, b"crash me").task_id
            # Wait until the broken miner took the task, then bring a healthy one.
            deadline = time.monotonic() + 60
            while not broken_calls and time.monotonic() < deadline:
                time.sleep(0.05)
            assert broken_calls and set(broken_calls) == {b"crash me"}
            with Miner(c, upper, name="healthy", tags=[tag], miner_key=cluster.miner_key) as good:
                task = client.wait(task_id, timeout=120)
                assert task.state == "completed" and task.result == b"CRASH ME"
            assert good.stats.reveals >= 1
            # The broken miner never precommitted anything.
            assert bad.stats.work_errors >= 1 and bad.stats.precommits == 0 and bad.stats.reveals == 0
            assert task.attempts >= 2
        finally:
            bad.stop()
