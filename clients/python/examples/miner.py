#!/usr/bin/env python3
"""An example miner: answers each task with a word count of its payload.

    pip install ./clients/python
    python clients/python/examples/miner.py --nodes 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003

It registers (with SQ_MINER_KEY, or SQ_API_KEY, when the cluster needs one), serves
until Ctrl-C (then leaves the cluster, so its unfinished slots go to other miners at
once), and registers again when the cluster declares it gone. ``--ca`` takes the CA
file of a TLS cluster (``cluster/up.sh --tls``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from session_queue import Client, Miner


def word_count(payload: bytes) -> bytes:
    """The work: how many words the payload has, and the most common one."""
    words = payload.decode("utf-8", "replace").split()
    counts: dict = {}
    for w in words:
        counts[w.lower()] = counts.get(w.lower(), 0) + 1
    top = max(sorted(counts), key=lambda w: counts[w]) if counts else None
    return json.dumps({"words": len(words), "top": top}, sort_keys=True).encode()


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", default=os.environ.get("SQ_NODES", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"))
    p.add_argument("--name", default="wordcount")
    p.add_argument("--capacity", type=int, default=4)
    p.add_argument("--tag", action="append", default=[], help="a tag the miner serves (repeatable)")
    p.add_argument("--ca", help="CA file (PEM) of a TLS cluster")
    p.add_argument("--once", action="store_true", help="exit when declared gone instead of registering again")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    client = Client(
        args.nodes.split(","),
        api_key=os.environ.get("SQ_API_KEY"),
        verify=args.ca if args.ca else True,
    )
    stopping = threading.Event()
    current: "list[Miner]" = []

    def on_signal(*_: object) -> None:
        stopping.set()
        for m in current:
            m.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    while not stopping.is_set():
        miner = Miner(
            client,
            word_count,
            name=args.name,
            capacity=args.capacity,
            tags=args.tag,
            miner_key=os.environ.get("SQ_MINER_KEY"),
        )
        current[:] = [miner]
        miner.start()
        print(f"miner {miner.id} serving (Ctrl-C to leave)", flush=True)
        while not miner.join(0.5):
            pass
        print(f"miner {miner.id}: {miner.stats}", flush=True)
        if miner.gone is None or stopping.is_set():
            break
        print(f"miner {miner.id} is gone ({miner.gone})", file=sys.stderr, flush=True)
        if args.once:
            return 1
        stopping.wait(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
