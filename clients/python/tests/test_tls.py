"""The client over https: a second three-node cluster whose API speaks TLS with
certificates from a throwaway CA (``session-queue certs``), reached with
``verify=<CA file>``: tasks, a miner, server-sent events and the WebSocket (wss).

A node binary without TLS (no ``certs`` command) makes these tests skip, except
under ``CI=true``, where they fail."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

from session_queue import Client, Event, Miner, NoNodeAvailableError, WebSocketUnsupportedError

from conftest import Cluster, cannot_run


@pytest.fixture(scope="module")
def tls_cluster(cluster: Cluster) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="sq-py-tls-"))
    certs = root / "certs"
    made = subprocess.run(
        [cluster.binary, "certs", "--out", str(certs), "--nodes", "node1,node2,node3"],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        why = (made.stderr.strip().splitlines() or ["?"])[0]
        cannot_run(f"the node binary makes no certificates (no TLS): {why}")
    ca = str(certs / "ca.pem")

    def flags(i: int) -> List[str]:
        return [
            "--tls-cert", str(certs / f"node{i + 1}.pem"),
            "--tls-key", str(certs / f"node{i + 1}-key.pem"),
            "--tls-ca", ca,
        ]

    c = Cluster(cluster.binary, root, node_flags=flags, verify=ca)
    try:
        for i in range(3):
            c.spawn(i)
        c.wait_ready()
        yield c
    finally:
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def upper(payload: bytes) -> bytes:
    return payload.upper()


def test_tasks_and_a_miner_over_https(tls_cluster: Cluster, tag: str) -> None:
    with tls_cluster.client() as client:
        assert all(n.startswith("https://") for n in client.nodes)
        s = client.create_session(tag=tag)
        events: List[Event] = []
        with client.events(s.id, timeout=120) as stream:
            stream.open()
            with Miner(tls_cluster.client(), upper, tags=[tag], miner_key=tls_cluster.miner_key):
                t = client.submit(s.id, b"secret").task_id
                task = client.wait(t, timeout=120)
                assert task.state == "completed" and task.result == b"SECRET"
                for ev in stream:
                    events.append(ev)
                    if ev.task_id == t and ev.state == "completed":
                        break
        assert [e.state for e in events if e.task_id == t][-1] == "completed"
    # Without the CA the node's certificate is not trusted: no node can be reached.
    with Client(["https://" + tls_cluster.nodes[0]], api_key=tls_cluster.api_key, retry_for=0) as untrusting:
        with pytest.raises(NoNodeAvailableError):
            untrusting.get_session(s.id)


def test_websocket_over_wss(tls_cluster: Cluster, tag: str) -> None:
    with tls_cluster.client() as client:
        s = client.create_session(tag=tag)
        ws = client.websocket_events(s.id, timeout=120)
        try:
            ws.connect()
        except WebSocketUnsupportedError as e:
            cannot_run(f"the node has no WebSocket on the events route: {e}")
        with ws, Miner(tls_cluster.client(), upper, tags=[tag], miner_key=tls_cluster.miner_key):
            t = client.submit(s.id, b"over wss").task_id
            states = []
            for ev in ws:
                if ev.task_id == t:
                    states.append(ev.state)
                    if ev.state == "completed":
                        break
        assert states and states[-1] == "completed", states
