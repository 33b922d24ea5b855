"""Primary spore figures (printed): commit latency p50/p99 on loopback for 3 and 5
in-process sclerotia. Run: .venv/bin/python -m pytest -m bench -s tests/bench/bench_raft.py"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from agent.raft.store import PrimarySpore
from support.primary import leader, ports, start, stop

pytestmark = pytest.mark.bench


def test_bench_commit_latency(tmp_path):
    print("\nsclerotia  commits  p50 ms  p99 ms")
    for n in (3, 5):
        stores = start(ports(n), tmp_path / str(n))
        try:
            p = PrimarySpore(leader(stores))

            async def go(p: PrimarySpore = p) -> list[float]:
                lat = []
                for v in range(1, 301):
                    t0 = time.perf_counter()
                    await p.put_envelope(v, f"h{v}", b"x" * 2048)
                    lat.append((time.perf_counter() - t0) * 1000)
                return lat

            lat = sorted(asyncio.run(go()))
            print(f"{n:9d}  {len(lat):7d}  {statistics.median(lat):6.1f}  "
                  f"{lat[int(0.99 * len(lat)) - 1]:6.1f}")
        finally:
            stop(stores)
