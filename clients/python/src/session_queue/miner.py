"""A miner in a few lines: give :class:`Miner` a function from payload bytes to
output, and it registers, heartbeats, long-polls its assignments and drives each one
through ack, precommit and reveal with a commit-reveal of the output.

    def work(payload: bytes) -> bytes:
        return payload.upper()

    with Miner(Client(["127.0.0.1:7001", "127.0.0.1:7002"]), work, tags=["demo"]):
        ...  # the miner serves in a thread of its own until the block ends

How it behaves toward the cluster (the rules of ``src/client/driver.rs``, the
Rust simulated miner):

- it heartbeats in a thread of its own, every quarter of its heartbeat timeout
  (learned from the first answer), and sooner after a failed heartbeat;
- it long-polls ``GET /v1/miners/{id}/assignments`` with ``after=`` (the answer's
  ``applied_index``), so it wakes only when its own list may have changed;
- a step is taken only when it is open: ack an ``assigned`` slot; precommit
  ``sha256(output || nonce)`` once the task left ``queued`` (every miner acked);
  reveal ``output`` and ``nonce`` once the task is ``precommitted`` or
  ``committed`` (the precommit phase closed). The output is computed once per slot,
  right after the ack, with a fresh random nonce, and kept until the reveal;
- a refused step (409 or another 4xx) waits until the list shows a change for that
  task, and then a growing backoff; a step that got no answer, or 429 or 5xx, is
  retried after a growing backoff with jitter; a list older than what the miner's
  own writes told it is ignored (a slot never moves back);
- told it is gone (409 "... is gone", or 401: the cluster no longer knows its
  token), it stops: :meth:`Miner.run` returns with :attr:`Miner.gone` set; register a
  new miner to go on;
- asked to stop, it leaves (deregisters), so its unfinished slots go to other
  miners at once rather than at their timeouts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ._backoff import Backoff
from .client import Client, commitment
from .errors import (
    ConnectionLostError,
    MinerGoneError,
    NoNodeAvailableError,
    RevealMismatchError,
    ServerError,
    ServiceUnavailableError,
    SessionQueueError,
    TooManyRequestsError,
    UnauthorizedError,
)
from .models import MinerAssignment, MinerRegistration, Payload, to_bytes

log = logging.getLogger("session_queue.miner")

#: The miner's work: the output for a task's payload.
Work = Callable[[bytes], Payload]

_RANK = {"assigned": 0, "acked": 1, "precommitted": 2, "committed": 3}


def _rank(slot_state: str) -> int:
    return _RANK.get(slot_state, 4)


def next_step(slot_state: str, task_state: str, has_secret: bool) -> Optional[str]:
    """The step open to a miner's slot: ``ack``, ``precommit``, ``commit`` or None."""
    if slot_state == "assigned":
        return "ack"
    if slot_state == "acked" and task_state != "queued":
        return "precommit"
    if slot_state == "precommitted" and has_secret and task_state in ("precommitted", "committed"):
        return "commit"
    return None


def _transient(e: BaseException) -> bool:
    """Worth retrying later as it is: no answer, or 429 or 5xx."""
    return isinstance(
        e,
        (NoNodeAvailableError, ConnectionLostError, TooManyRequestsError, ServiceUnavailableError, ServerError),
    )


def _gone(e: BaseException) -> bool:
    return isinstance(e, (MinerGoneError, UnauthorizedError))


@dataclass
class MinerStats:
    """What the miner did."""

    registrations: int = 0
    heartbeats: int = 0
    polls: int = 0
    acks: int = 0
    precommits: int = 0
    reveals: int = 0
    #: Reveals refused as not matching their precommit (422).
    rejected: int = 0
    #: Steps refused (409 or another 4xx): each waits until its task's listing changes.
    refused: int = 0
    #: Calls that got no answer, or 429 or 5xx (retried with backoff).
    errors: int = 0
    #: Times the work function raised (the slot is left to time out).
    work_errors: int = 0


@dataclass
class _Slot:
    task_id: str
    assigned_ms: int
    payload: bytes
    state: str
    task_state: str
    secret: Optional[Tuple[bytes, bytes]] = None
    refused: bool = False
    broken: bool = False
    retry_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.1, 10.0))
    last_listed: float = field(default_factory=time.monotonic)


class _Gone(Exception):
    pass


class Miner:
    """A miner serving ``work`` until stopped or declared gone.

    ``client``: a :class:`Client` of the cluster (its nodes, TLS and failover);
    ``miner_key``: the node's ``--miner-key`` for registration (default: the
    client's API key). ``capacity``: tasks at once; ``tags``: what it serves (a
    session with a tag reserves only miners listing it). ``heartbeat_timeout_ms``:
    registered with the miner (default: the node's). ``poll_wait_ms``: how long one
    long poll may wait."""

    def __init__(
        self,
        client: Client,
        work: Work,
        *,
        name: str = "python-miner",
        capacity: int = 1,
        tags: Sequence[str] = (),
        miner_key: Optional[str] = None,
        heartbeat_timeout_ms: Optional[int] = None,
        poll_wait_ms: int = 10_000,
    ) -> None:
        self.client = client
        self.work = work
        self.name = name
        self.capacity = capacity
        self.tags = list(tags)
        self.miner_key = miner_key
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.poll_wait_ms = poll_wait_ms
        self.id: Optional[str] = None
        self.token: Optional[str] = None
        #: Why the cluster declared this miner gone, once it did.
        self.gone: Optional[str] = None
        self.stats = MinerStats()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._slots: Dict[str, _Slot] = {}
        self._left = False

    # -- life ---------------------------------------------------------------------

    def register(self) -> MinerRegistration:
        """Registers (once), retrying with backoff while no node answers or the
        cluster is busy; a refusal (401, 400) raises."""
        if self.id is not None and self.token is not None:
            return MinerRegistration(self.id, self.token)
        backoff = Backoff(0.1, 5.0)
        while True:
            self.stats.registrations += 1
            try:
                reg = self.client.register_miner(
                    self.name,
                    capacity=self.capacity,
                    tags=self.tags,
                    heartbeat_timeout_ms=self.heartbeat_timeout_ms,
                    miner_key=self.miner_key,
                )
            except SessionQueueError as e:
                # A lost answer may have registered a miner nobody serves: it is
                # declared gone at its heartbeat timeout, and costs nothing more.
                if not _transient(e) or self._stop.is_set():
                    raise
                self.stats.errors += 1
                self._stop.wait(backoff.fail())
                continue
            self.id, self.token = reg.miner_id, reg.token
            log.info("miner %s registered as %s", self.name, self.id)
            return reg

    def run(self) -> Optional[str]:
        """Registers if needed, then serves until :meth:`stop` or until the cluster
        declares the miner gone. Returns why it is gone, or None when stopped."""
        self.register()
        heart = threading.Thread(target=self._heartbeat, name=f"{self.name}-heartbeat", daemon=True)
        heart.start()
        try:
            self._work()
        except _Gone as e:
            # After a stop, "gone" is only the miner's own leave.
            if not self._stop.is_set():
                self.gone = str(e)
                log.warning("miner %s is gone: %s", self.id, self.gone)
        finally:
            self._stop.set()
            heart.join()
            if self.gone is None:
                self._leave()
        return self.gone

    def start(self) -> "Miner":
        """Runs :meth:`run` in a daemon thread; registers first, in this thread, so a
        refused registration raises here."""
        self.register()
        self._thread = threading.Thread(target=self._run_quietly, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run_quietly(self) -> None:
        try:
            self.run()
        except Exception:  # pragma: no cover - logged, the thread must not die loudly
            log.exception("miner %s failed", self.name)

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the miner and leaves the cluster; waits for its thread."""
        self._stop.set()
        # Leaving wakes the long poll at once (the miner is then gone).
        self._leave()
        if self._thread is not None:
            self._thread.join(timeout)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Waits for the thread of :meth:`start` to end; returns whether it did."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "Miner":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _leave(self) -> None:
        if self._left or self.id is None or self.token is None or self.gone is not None:
            return
        self._left = True
        try:
            self.client.leave(self.id, self.token, retry_for=2.0)
        except SessionQueueError as e:
            log.info("miner %s could not leave: %s", self.id, e)

    # -- heartbeat ----------------------------------------------------------------

    def _heartbeat(self) -> None:
        assert self.id is not None and self.token is not None
        every = (self.heartbeat_timeout_ms / 4000.0) if self.heartbeat_timeout_ms else None
        retry = Backoff(0.05, 1.0)
        # Registering counted as a heartbeat; without a known timeout, ask now.
        wait = every if every is not None else 0.0
        while not self._stop.wait(wait):
            self.stats.heartbeats += 1
            try:
                v = self.client.heartbeat(self.id, self.token, retry_for=0.0)
            except SessionQueueError as e:
                if _gone(e):
                    if not self._stop.is_set():
                        self.gone = str(e)
                        self._stop.set()
                    return
                self.stats.errors += 1
                # Sooner than the schedule, so one lost heartbeat does not cost the slots.
                wait = min(retry.fail(), every if every is not None else 1.0)
                continue
            retry.reset()
            ms = v.get("heartbeat_timeout_ms") if isinstance(v, dict) else None
            if isinstance(ms, int) and ms > 0:
                every = max(0.02, ms / 4000.0)
            wait = every if every is not None else 1.0

    # -- work ---------------------------------------------------------------------

    def _work(self) -> None:
        assert self.id is not None and self.token is not None
        after: Optional[int] = None
        poll_backoff = Backoff(0.1, 5.0)
        while not self._stop.is_set():
            if self.gone is not None:
                raise _Gone(self.gone)
            now = time.monotonic()
            waits = [s.retry_at - now for s in self._slots.values() if self._due_later(s)]
            wait_ms = self.poll_wait_ms
            if waits:
                wait_ms = max(0, min(wait_ms, int(min(waits) * 1000)))
            self.stats.polls += 1
            try:
                listed = self.client.assignments(
                    self.id,
                    self.token,
                    wait_ms=wait_ms,
                    after=after,
                    limit=max(1, min(self.capacity, 4096)),
                    retry_for=0.0,
                )
            except SessionQueueError as e:
                if _gone(e):
                    if self._stop.is_set():
                        return
                    raise _Gone(str(e)) from e
                if not _transient(e):
                    raise
                self.stats.errors += 1
                self._stop.wait(poll_backoff.fail())
                continue
            poll_backoff.reset()
            after = listed.applied_index
            self._take_list(listed.assignments)
            for slot in list(self._slots.values()):
                if self._stop.is_set():
                    return
                self._drive(slot)

    def _due_later(self, s: _Slot) -> bool:
        """A slot with a retry pending (not one parked until its listing changes)."""
        return not s.refused and not s.broken and s.retry_at > 0 and next_step(
            s.state, s.task_state, s.secret is not None
        ) is not None

    def _take_list(self, listed: List[MinerAssignment]) -> None:
        now = time.monotonic()
        present = set()
        for a in listed:
            present.add(a.task_id)
            slot = self._slots.get(a.task_id)
            if slot is None or a.assigned_ms > slot.assigned_ms:
                # A new slot (or the task came back to this miner): start over.
                self._slots[a.task_id] = _Slot(
                    a.task_id, a.assigned_ms, a.payload or b"", a.state, a.task_state
                )
                continue
            if a.assigned_ms < slot.assigned_ms or _rank(a.state) < _rank(slot.state):
                continue  # a list older than what the miner already knows
            slot.last_listed = now
            if (a.state, a.task_state) != (slot.state, slot.task_state):
                slot.refused = False
                slot.state, slot.task_state = a.state, a.task_state
        # Forget slots no longer listed (finished), unless a lagging node may have
        # left out a slot whose secret the miner still needs.
        for task_id in [t for t in self._slots if t not in present]:
            slot = self._slots[task_id]
            if slot.secret is None or slot.state == "committed" or now - slot.last_listed > 60:
                del self._slots[task_id]

    def _drive(self, slot: _Slot) -> None:
        """Takes the steps open on one slot, one after the other, until none is open
        or one is not answered with success."""
        assert self.token is not None
        if slot.refused or slot.broken or time.monotonic() < slot.retry_at:
            return
        while True:
            step = next_step(slot.state, slot.task_state, slot.secret is not None)
            if step is None:
                return
            try:
                if step == "ack":
                    slot.task_state = self.client.ack(slot.task_id, self.token, retry_for=0.0)
                    slot.state = "acked"
                    self.stats.acks += 1
                    # Work while the other miners ack: the precommit is ready the
                    # moment the phase opens.
                    if not self._compute(slot):
                        return
                elif step == "precommit":
                    if not self._compute(slot):
                        return
                    assert slot.secret is not None
                    output, nonce = slot.secret
                    slot.task_state = self.client.precommit(
                        slot.task_id, self.token, commitment(output, nonce), retry_for=0.0
                    )
                    slot.state = "precommitted"
                    self.stats.precommits += 1
                else:
                    assert slot.secret is not None
                    output, nonce = slot.secret
                    slot.task_state = self.client.commit(slot.task_id, self.token, output, nonce, retry_for=0.0)
                    slot.state = "committed"
                    self.stats.reveals += 1
                slot.backoff.reset()
                slot.retry_at = 0.0
            except RevealMismatchError:
                self.stats.rejected += 1
                slot.state = "rejected"
                return
            except SessionQueueError as e:
                if _gone(e):
                    raise _Gone(str(e)) from e
                if _transient(e):
                    self.stats.errors += 1
                else:
                    # Refused: wait until the listing of this task changes.
                    self.stats.refused += 1
                    slot.refused = True
                    log.debug("miner %s: %s of %s refused: %s", self.id, step, slot.task_id, e)
                slot.retry_at = time.monotonic() + slot.backoff.fail()
                return

    def _compute(self, slot: _Slot) -> bool:
        """The slot's output and a fresh nonce, computed once."""
        if slot.secret is not None:
            return True
        try:
            output = to_bytes(self.work(slot.payload))
        except Exception:
            self.stats.work_errors += 1
            slot.broken = True
            log.exception("miner %s: the work function failed on %s", self.id, slot.task_id)
            return False
        slot.secret = (output, os.urandom(16))
        return True
