"""A virtual-time asyncio loop for simulations: when nothing is ready to run, time jumps
to the next timer, so 1000 gossiping nodes simulate faster than real time and CPU cost
never shows up as network delay."""

from __future__ import annotations

import asyncio


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual = 0.0

    def time(self) -> float:
        return self._virtual

    def _run_once(self) -> None:
        if not self._ready and self._scheduled:
            when = self._scheduled[0]._when
            if when > self._virtual:
                self._virtual = when
        super()._run_once()


def run_virtual(coro):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
