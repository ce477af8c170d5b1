"""The asyncio client against the real cluster: sessions, submit, batch, get, wait,
cancel and the SSE stream, with a (threaded) Miner serving the tasks."""

from __future__ import annotations

import asyncio
from typing import List

import pytest

from session_queue import AsyncClient, Event, Miner, NotFoundError, WaitTimeoutError

from conftest import Cluster


def test_async_client_lifecycle(cluster: Cluster, tag: str) -> None:
    async def main() -> None:
        async with AsyncClient(cluster.nodes, api_key=cluster.api_key) as c:
            s = await c.create_session(redundancy=1, tag=tag)
            assert (await c.get_session(s.id)).tag == tag
            with pytest.raises(NotFoundError):
                await c.get_task("t-99999999")
            # No miner yet: it waits, then we cancel one task.
            doomed = await c.submit(s.id, b"cancel me")
            with pytest.raises(WaitTimeoutError):
                await c.wait(doomed.task_id, timeout=0.3)
            assert await c.cancel(doomed.task_id) == "cancelled"

            events: List[Event] = []
            ids: List[str] = []

            opened = asyncio.Event()

            async def read() -> None:
                async for ev in c.events(s.id, timeout=120, on_open=opened.set):
                    events.append(ev)
                    done = {e.task_id for e in events if e.event == "transition" and e.state == "completed"}
                    if ids and set(ids) <= done:
                        return

            reader = asyncio.create_task(read())
            await asyncio.wait_for(opened.wait(), 60)
            with Miner(cluster.client(), lambda p: p[::-1], tags=[tag], miner_key=cluster.miner_key):
                one = await c.submit(s.id, b"abc")
                batch = await c.submit_batch(s.id, [b"xy", "z"])
                ids.extend([one.task_id] + batch.task_ids)
                results = [await c.wait(t, timeout=120) for t in ids]
                await asyncio.wait_for(reader, 120)
            assert [r.result for r in results] == [b"cba", b"yx", b"z"]
            assert all(r.state == "completed" for r in results)
            completed = [e.task_id for e in events if e.event == "transition" and e.state == "completed"]
            assert sorted(completed) == sorted(ids)
            closed = await c.close_session(s.id)
            assert closed["state"] == "closed"

    asyncio.run(main())
