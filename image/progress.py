"""One helper for announcing and timing build steps, so a build log shows where time went."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

TIMINGS: list[tuple[str, float]] = []


@contextmanager
def step(title: str) -> Iterator[None]:
    print(f"==> {title}", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - start
        TIMINGS.append((title, took))
        print(f"    {title}: {took:.1f} s", file=sys.stderr, flush=True)
