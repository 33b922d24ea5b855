"""How hard a replicated VM is slowed, and what happens to a checkpoint buffer that fills
(pure: numbers in, decisions out).

The primary keeps unsent checkpoint bytes in a buffer per VM. `fill` is the fraction of
that buffer in use. Below `throttle.threshold` the VM runs free; above it the VM's CPU is
throttled along the curve, from 0 at the threshold to 1 (the most QEMU allows) at a full
buffer:
  linear       level = x
  exponential  level = (2^(K x) - 1) / (2^K - 1): gentle first, steep near full
  custom       piecewise linear through the (load, throttle) points, where load is the
               fill itself (not x) and throttle is in [0, 1]; flat beyond the ends
with x = (fill - threshold) / (1 - threshold). At a full buffer (`next_step`): pause the VM
when `emergency_pause` is on (nothing is lost, the guest waits for the link); otherwise
drop the oldest unsent checkpoint and send the next one full (the chain the backups hold
is broken by the drop, so an incremental one could not be applied).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

from agent.desired.model import Throttle

EXP_K = 5.0  # steepness of the exponential curve
QEMU_MAX_PERCENT = 99  # cpu-throttle-percentage tops out at 99


def _clamp(v: float) -> float:
    return max(0.0, min(1.0, v))


def level(t: Throttle, fill: float) -> float:
    """Throttle level in [0, 1] for a buffer `fill` fraction in [0, 1]."""
    fill = _clamp(fill)
    if t.curve == "custom":
        return _through(t.points, fill)
    if fill <= t.threshold:
        return 0.0
    x = 1.0 if t.threshold >= 1.0 else (fill - t.threshold) / (1.0 - t.threshold)
    if t.curve == "exponential":
        return _clamp((2 ** (EXP_K * x) - 1) / (2 ** EXP_K - 1))
    return _clamp(x)


def _through(points: tuple[tuple[float, float], ...], fill: float) -> float:
    pts = sorted(points)
    if not pts:
        return 0.0
    if fill <= pts[0][0]:
        return _clamp(pts[0][1])
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if fill <= x1:
            return _clamp(y0 if x1 == x0 else y0 + (y1 - y0) * (fill - x0) / (x1 - x0))
    return _clamp(pts[-1][1])


def qemu_percent(lvl: float) -> int:
    """The level as QEMU's cpu-throttle-percentage (0 means: throttle off)."""
    return round(_clamp(lvl) * QEMU_MAX_PERCENT)


Action = Literal["send", "pause", "drop_oldest"]


@dataclass(frozen=True)
class Step:
    action: Action
    throttle: float  # level to set on the VM
    send_full: bool  # the next checkpoint must be full


def next_step(t: Throttle, buffered: int, capacity: int, incoming: int) -> Step:
    """What to do with a new checkpoint of `incoming` bytes when `buffered` unsent bytes
    sit in a buffer of `capacity`."""
    after = buffered + incoming
    fill = after / capacity if capacity > 0 else 1.0
    if after <= capacity:
        return Step("send", level(t, fill), False)
    if t.emergency_pause:
        return Step("pause", 1.0, False)
    return Step("drop_oldest", 1.0, True)
