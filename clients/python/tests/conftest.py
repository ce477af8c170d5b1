"""A real three-node cluster for the tests, started once per test session.

The node binary comes from ``SQ_BIN`` (``tests/python.sh`` builds it and sets it).
The nodes listen on free loopback ports with their data in a temporary directory,
require an API key and a miner key, and are killed (SIGKILL) and deleted at the end,
as ``tests/common/mod.rs`` does for the Rust tests. A test that cannot run its
scenario here skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Union

import httpx
import pytest

from session_queue import Client
from session_queue.client import ssl_context

API_KEY = "py-test-api-key-0123456789"
MINER_KEY = "py-test-miner-key-0123456789"
SECRET = "py-test-cluster-secret-0123456789"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def cannot_run(why: str) -> None:
    """This test cannot run its scenario here: a failure under CI, else a skip."""
    if under_ci():
        pytest.fail(f"cannot run here under CI: {why}")
    pytest.skip(f"{why} (under CI=true this fails)")


def free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """``node_flags(i)``: extra flags of node ``i``; ``verify``: a CA file when the
    nodes speak https (the clients then use ``https://`` addresses)."""

    def __init__(
        self,
        binary: str,
        root: Path,
        n: int = 3,
        *,
        node_flags: Optional[Callable[[int], List[str]]] = None,
        verify: Union[bool, str] = True,
    ) -> None:
        self.binary = binary
        self.root = root
        self.node_flags = node_flags or (lambda i: [])
        self.verify = verify
        self.scheme = "https" if isinstance(verify, str) else "http"
        self.api_key = API_KEY
        self.miner_key = MINER_KEY
        ports = free_ports(2 * n)
        self.api_ports = ports[0::2]
        self.peer_ports = ports[1::2]
        self.procs: List[Optional[subprocess.Popen]] = [None] * n
        self.members = ",".join(
            f"{i + 1}=127.0.0.1:{self.api_ports[i]}/127.0.0.1:{self.peer_ports[i]}" for i in range(n)
        )

    @property
    def nodes(self) -> List[str]:
        return [f"127.0.0.1:{p}" for p in self.api_ports]

    def log(self, i: int) -> Path:
        return self.root / f"node{i + 1}.log"

    def spawn(self, i: int) -> None:
        env = dict(os.environ)
        env.update(
            SQ_CLUSTER_SECRET=SECRET,
            SQ_API_KEY=self.api_key,
            SQ_MINER_KEY=self.miner_key,
            RUST_LOG="info,openraft=warn",
            RUST_LIB_BACKTRACE="0",
        )
        with open(self.log(i), "ab") as log:
            self.procs[i] = subprocess.Popen(
                [
                    self.binary, "node",
                    "--id", str(i + 1),
                    "--api-addr", f"127.0.0.1:{self.api_ports[i]}",
                    "--peer-addr", f"127.0.0.1:{self.peer_ports[i]}",
                    "--data-dir", str(self.root / f"node{i + 1}"),
                    "--initial-cluster", self.members,
                    "--initial-cluster-state", "new",
                    *self.node_flags(i),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (0-based)."""
        proc = self.procs[i]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.procs[i] = None

    def restart(self, i: int) -> None:
        self.kill(i)
        self.spawn(i)
        self.wait_ready()

    def revive(self, i: int) -> None:
        """Starts node ``i`` again on its data if it was killed, and waits until the
        cluster is ready."""
        if self.procs[i] is None:
            self.spawn(i)
        self.wait_ready()

    def ready(self, i: int) -> bool:
        try:
            url = f"{self.scheme}://{self.nodes[i]}/ready"
            return httpx.get(url, timeout=2.0, verify=ssl_context(self.verify)).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Waits until every running node is ready (has a leader, caught up)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"node {i + 1} exited ({proc.returncode}):\n{self.logs()}")
            running = [i for i, p in enumerate(self.procs) if p is not None]
            if running and all(self.ready(i) for i in running):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster was not ready within {timeout} s:\n{self.logs()}")
            time.sleep(0.2)

    def leader(self) -> int:
        """The leader's index (0-based), as the cluster reports it."""
        with self.client() as c:
            v = c.cluster()
        leader = v.get("leader")
        return int(leader) - 1

    def client(self, **kw: Any) -> Client:
        kw.setdefault("api_key", self.api_key)
        kw.setdefault("verify", self.verify)
        return Client(self.nodes, **kw)

    def logs(self) -> str:
        out = []
        for i in range(len(self.procs)):
            try:
                lines = self.log(i).read_text(errors="replace").splitlines()[-30:]
            except OSError:
                lines = []
            out.append(f"--- node {i + 1} ---\n" + "\n".join(lines))
        return "\n".join(out)

    def stop_all(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    binary = os.environ.get("SQ_BIN", "")
    if not binary or not os.access(binary, os.X_OK):
        cannot_run(f"no node binary: set SQ_BIN to the session-queue binary (got {binary!r})")
    root = Path(tempfile.mkdtemp(prefix="sq-py-test-"))
    c = Cluster(binary, root)
    try:
        for i in range(3):
            c.spawn(i)
        c.wait_ready()
        yield c
    finally:
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    with cluster.client() as c:
        yield c


@pytest.fixture
def tag() -> str:
    """A tag of this test's own: its sessions reserve only its own miners."""
    return "t-" + uuid.uuid4().hex[:12]
