"""Failover against the real cluster: a node that refuses connections, and the
leader killed (SIGKILL) under a client, a miner and an event stream. Each test
brings the killed node back before it ends."""

from __future__ import annotations

import threading
from typing import List

from session_queue import Client, Event, Miner

from conftest import Cluster, cannot_run, free_ports


def upper(payload: bytes) -> bytes:
    return payload.upper()


def test_a_node_refusing_connections_is_skipped(cluster: Cluster, tag: str) -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    with Client([dead] + cluster.nodes, api_key=cluster.api_key) as c:
        s = c.create_session(tag=tag)
        t = c.submit(s.id, b"through the second node")
        assert c.get_task(t.task_id).state == "queued"
        # It stays on the node that answered.
        assert c._node()[1] != "http://" + dead


def test_leader_killed_under_a_client_and_a_miner(cluster: Cluster, tag: str) -> None:
    leader = cluster.leader()
    # The client's first node is the leader; the miner's is another node.
    order = [cluster.nodes[leader]] + [n for i, n in enumerate(cluster.nodes) if i != leader]
    others = order[1:] + order[:1]
    try:
        with Client(order, api_key=cluster.api_key) as c, Miner(
            Client(others, api_key=cluster.api_key), upper, tags=[tag], miner_key=cluster.miner_key
        ) as miner:
            s = c.create_session(tag=tag)
            before = c.submit(s.id, b"before").task_id
            assert c.wait(before, timeout=120).result == b"BEFORE"
            cluster.kill(leader)
            # Refused connections, then 503 until a new leader: the client retries.
            after = c.submit(s.id, b"after")
            assert after.created
            done = c.wait(after.task_id, timeout=120)
            assert done.state == "completed" and done.result == b"AFTER", cluster.logs()
            # The task answered before the kill is still there, on every live node.
            for i, node in enumerate(cluster.nodes):
                if i != leader:
                    with Client([node], api_key=cluster.api_key) as one:
                        assert one.get_task(before, linearizable=True).result == b"BEFORE"
            assert miner.gone is None
    finally:
        cluster.revive(leader)


def test_sse_stream_resumes_on_another_node_when_its_node_dies(cluster: Cluster, tag: str) -> None:
    leader = cluster.leader()
    victim = (leader + 1) % 3  # a follower: the stream's node
    order = [cluster.nodes[victim]] + [n for i, n in enumerate(cluster.nodes) if i != victim]
    others = [n for i, n in enumerate(cluster.nodes) if i != victim]
    try:
        with Client(order, api_key=cluster.api_key) as reader_client, Client(
            others, api_key=cluster.api_key
        ) as c, Miner(Client(others, api_key=cluster.api_key), upper, tags=[tag], miner_key=cluster.miner_key):
            s = c.create_session(tag=tag)
            ids: List[str] = []
            stream = reader_client.events(s.id, timeout=120).open()
            events: List[Event] = []
            second_done = threading.Event()

            def read() -> None:
                for ev in stream:
                    events.append(ev)
                    if ev.event == "transition" and ev.task_id in ids[1:] and ev.state == "completed":
                        second_done.set()
                        return

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            ids.append(c.submit(s.id, b"one").task_id)
            c.wait(ids[0], timeout=120)
            # Wait until the stream has the first task's completion, then kill its node.
            deadline_events = lambda: any(  # noqa: E731
                e.task_id == ids[0] and e.state == "completed" for e in list(events)
            )
            for _ in range(600):
                if deadline_events():
                    break
                second_done.wait(0.1)
            assert deadline_events(), events
            if not all(e.id for e in events if e.event == "transition"):
                stream.close()
                cannot_run("the node's server-sent events carry no ids (no resume support)")
            cluster.kill(victim)
            ids.append(c.submit(s.id, b"two").task_id)
            c.wait(ids[1], timeout=120)
            reader.join(120)
            assert second_done.is_set(), events
            assert stream.connections >= 2
            # Nothing lost, nothing twice: every transition of the second task, once.
            two = [e.state for e in events if e.event == "transition" and e.task_id == ids[1]]
            assert two[0] == "queued" and two[-1] == "completed", two
            transition_ids = [e.id for e in events if e.event == "transition"]
            assert len(set(transition_ids)) == len(transition_ids)
    finally:
        cluster.revive(victim)
