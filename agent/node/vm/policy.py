"""The supervisor's rules, as pure functions of what happened (no clock, no processes).

States: starting (image checked, QEMU launched, QMP not yet answering), running (QMP says
so), restarting (QEMU died while the VM is still placed here: waiting out the backoff),
stopping (placement moved it or it was deleted: powerdown, deadline, kill), stopped,
failed (with the reason; no more restarts until the spec or placement changes).

Restarts: a run that lasted at least STABLE_S resets the count. Otherwise each exit
doubles the wait (BACKOFF_MIN_S up to BACKOFF_MAX_S), and QUICK_EXITS exits in a row each
within QUICK_S of their start mean the VM cannot run here: it is reported failed with
QEMU's last words instead of being retried in a loop. Bad input (an image whose hash does
not match, a missing kernel) is failed at once: retrying cannot fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

State = Literal["starting", "running", "restarting", "stopping", "stopped", "failed"]

QUICK_S = 10.0  # an exit this soon after the start is "at once"
QUICK_EXITS = 3  # that many at once in a row: failed
STABLE_S = 60.0  # a run this long resets the backoff
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0


@dataclass(frozen=True)
class Exits:
    """The exits since the VM last ran stably."""

    count: int = 0  # exits in a row, none after a stable run
    quick: int = 0  # of which at once, in a row


@dataclass(frozen=True)
class Verdict:
    restart: bool
    delay: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Policy:
    quick_s: float = QUICK_S
    quick_exits: int = QUICK_EXITS
    stable_s: float = STABLE_S
    backoff_min_s: float = BACKOFF_MIN_S
    backoff_max_s: float = BACKOFF_MAX_S

    def after_exit(self, exits: Exits, ran_s: float, why: str) -> tuple[Exits, Verdict]:
        """QEMU exited after `ran_s` seconds while still placed here (`why`: its exit
        status and last stderr line): the new exit record and whether to restart."""
        if ran_s >= self.stable_s:
            exits = Exits()
        quick = exits.quick + 1 if ran_s < self.quick_s else 0
        exits = replace(exits, count=exits.count + 1, quick=quick)
        if quick >= self.quick_exits:
            return exits, Verdict(False, reason=f"QEMU exited at once {quick} times in a row "
                                  f"(last: {why})")
        delay = min(self.backoff_min_s * 2 ** (exits.count - 1), self.backoff_max_s)
        return exits, Verdict(True, delay, f"QEMU exited ({why}); restart {exits.count} in "
                              f"{delay:g} s")


DEFAULT_POLICY = Policy()


def uptime_s(state: State, started: float | None, now: float) -> float | None:
    """Seconds since the current QEMU started, while it is starting or running."""
    if state not in ("starting", "running") or started is None:
        return None
    return max(0.0, now - started)


# A planned move (`mycelium vm migrate`) leaves the old primary's guest paused after its
# final checkpoint until the move is committed and the new primary runs it.
HANDOFF_WAIT_S = 60.0  # a paused guest still placed here waits this long for its move
HANDOFF_GIVE_UP_S = 600.0  # a moved guest's paused copy is kept this long at most

Handoff = Literal["wait", "resume", "quit"]


def after_handoff(placed_here: bool, runs_elsewhere: bool, majority: bool,
                  waited_s: float) -> Handoff:
    """What the old primary does with a guest paused for a planned move:
    - moved away (the placement names another primary): quit once the new primary runs
      it (never before: if it cannot, the paused copy is all there is), or after
      HANDOFF_GIVE_UP_S;
    - still placed here after HANDOFF_WAIT_S: the move was not committed; resume, but
      only with a majority in reach. A node cut off from the majority cannot know whether
      the leader committed the move meanwhile: it keeps the guest paused rather than run
      it beside the new primary;
    - otherwise wait."""
    if not placed_here:
        return "quit" if runs_elsewhere or waited_s >= HANDOFF_GIVE_UP_S else "wait"
    if runs_elsewhere:  # a newer placement is on its way here: never run it twice
        return "wait"
    return "resume" if majority and waited_s >= HANDOFF_WAIT_S else "wait"
