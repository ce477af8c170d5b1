"""The example miner (examples/miner.py) as a user runs it: it serves a session's
tasks with its word count, and leaves the cluster on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from session_queue import Client

from conftest import Cluster

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "miner.py"


def test_example_miner_counts_words(cluster: Cluster, client: Client, tag: str) -> None:
    env = dict(os.environ, SQ_API_KEY=cluster.api_key, SQ_MINER_KEY=cluster.miner_key)
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--nodes", ",".join(cluster.nodes), "--tag", tag, "--name", "example"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        s = client.create_session(tag=tag)
        t = client.submit(s.id, "the cat saw the dog").task_id
        task = client.wait(t, timeout=120)
        assert task.state == "completed", task
        assert json.loads(task.result or b"") == {"words": 5, "top": "the"}
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "serving" in out and "reveals=1" in out, out


def test_a_ca_file_means_https() -> None:
    """verify=<CA file> (here certifi's bundle, which httpx brings) gives an SSL
    context for httpx and websockets, and bare addresses become https ones."""
    import ssl

    import certifi

    with Client(["127.0.0.1:7001", "http://127.0.0.1:7002"], verify=certifi.where()) as c:
        assert c.nodes == ["https://127.0.0.1:7001", "http://127.0.0.1:7002"]
        assert isinstance(c.verify, ssl.SSLContext)
        assert c.websocket_events("s-1")._url(c.nodes[0]) == "wss://127.0.0.1:7001/v1/sessions/s-1/events"
    with Client("127.0.0.1:7001") as plain:
        assert plain.nodes == ["http://127.0.0.1:7001"] and plain.verify is True
