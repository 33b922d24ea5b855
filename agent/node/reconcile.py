"""The reconcile loop: converge this machine to its plan, in a subprocess, with backoff.

Triggers: a new verified state, a new share (placement), and a drift timer. Each run
writes the plan to the data dir and runs `python -m agent.node.apply` on it, so a crash in
pyinfra (or the agent being restarted by its own recipe) never takes the daemon down
and the memory pyinfra uses is returned after each run. The outcome is persisted
(reconcile.json) and summarised in the gossip meta, so `mycelium status` shows it on
every node. A failure keeps the last good version, reports `degraded`, and is retried
after a backoff that doubles (agent/tuning.py: 5 s up to 5 minutes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.desired.plan import NodePlan
from agent.errors import StorageError
from agent.statefile import atomic_write
from agent.trust.encoding import dump_json, load_json_object
from agent.tuning import (
    APPLY_TIMEOUT,
    DRIFT_INTERVAL,
    PRIVATE_FILE,
    RECONCILE_BACKOFF_MAX,
    RECONCILE_BACKOFF_MIN,
)

log = logging.getLogger("mycelium.reconcile")


class Reconciler:
    """Owns the loop task; `kick()` asks for a run soon (coalesced)."""

    def __init__(self, data_dir: Path, target: str, make_plan: Callable[[], NodePlan | None],
                 drift_interval: float = DRIFT_INTERVAL,
                 prepare: Callable[[], Awaitable[None]] | None = None,
                 command: tuple[str, ...] = ()) -> None:
        """`prepare` runs before each plan: it fetches what the plan needs from the network.
        `command` replaces `python -m agent.node.apply` (a test's stand-in; same arguments,
        same report)."""
        self.prepare = prepare
        self.command = command or (sys.executable, "-m", "agent.node.apply")
        self.dir = data_dir
        self.target = target
        self.make_plan = make_plan
        self.drift_interval = drift_interval
        self.status: dict[str, Any] = self._load()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = RECONCILE_BACKOFF_MIN

    @property
    def status_file(self) -> Path:
        return self.dir / "reconcile.json"

    def _load(self) -> dict[str, Any]:
        try:
            return load_json_object(self.status_file.read_bytes(), "reconcile.json")
        except Exception:  # noqa: BLE001 - a missing or damaged status only loses history
            return {"status": "pending", "applied_version": 0}

    def summary(self) -> dict[str, Any]:
        """Small enough to ride in every gossip message."""
        s = self.status
        return {**{k: s.get(k) for k in ("status", "applied_version", "changed", "failed",
                                         "duration_s", "components", "waiting")},
                **{k: s[k] for k in ("content", "content_bad") if s.get(k)}}

    async def __aenter__(self) -> Reconciler:
        self._task = asyncio.create_task(self._loop(), name="reconcile")
        self.kick()  # a crash mid-apply is completed by the first run after restart
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def kick(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        delay = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay or None)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                ok = await self.run_once()
            except StorageError as e:  # plan or status not written: back off, try again
                log.error("apply: %s", e)
                ok = False
            if ok:
                self._backoff = RECONCILE_BACKOFF_MIN
                delay = self.drift_interval
            else:
                delay, self._backoff = self._backoff, min(self._backoff * 2, RECONCILE_BACKOFF_MAX)

    async def run_once(self) -> bool:
        if self.prepare is not None:
            await self.prepare()
        plan = self.make_plan()
        if plan is None:
            return True  # no accepted state yet: nothing to converge to
        plan_file = self.dir / "plan.json"
        report_file = self.dir / "apply-report.json"
        atomic_write(plan_file, dump_json(plan.to_dict()), mode=PRIVATE_FILE)  # may hold a token
        self._set(status="applying", applying_version=plan.version)
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *self.command, str(plan_file), self.target,
            str(report_file), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), APPLY_TIMEOUT)
        except TimeoutError:
            proc.kill()
            out = b"apply timed out"
        report: dict[str, Any] = {}
        try:
            report = json.loads(report_file.read_text())
        except (OSError, ValueError):
            pass
        ok = proc.returncode == 0 and report.get("ok") is True
        failed = [o for o in report.get("ops", []) if o.get("success") is False]
        changed = [o["name"] for o in report.get("ops", []) if o.get("changed")]
        status = "ok" if ok and not plan.waiting else ("waiting" if ok else "degraded")
        update: dict[str, Any] = {
            "status": status, "changed": len(changed), "failed": len(failed),
            "duration_s": round(time.monotonic() - start, 2),
            "components": list(plan.components), "waiting": list(plan.waiting),
            "last_run": time.time(), "error": report.get("error") or "",
        }
        if ok:
            update["applied_version"] = plan.version
            update["content"] = plan.content  # what a staged change's gate reads
            if self.status.get("content_bad") == plan.content:  # a retry got through
                update["content_bad"] = ""
        else:
            update["content_bad"] = plan.content
            detail = failed[0]["output"] if failed else out.decode(errors="replace")[-2000:]
            update["failure"] = {"op": failed[0]["name"] if failed else "",
                                 "output": detail[-2000:]}
            log.warning("apply of version %s failed: %s", plan.version,
                        update["failure"]["op"] or detail.strip().splitlines()[-1:])
        self._set(**update)
        if ok:
            log.info("applied version %s: %d changed in %.1f s", plan.version, len(changed),
                     update["duration_s"])
        return ok

    def _set(self, **kw: Any) -> None:
        self.status = {**self.status, **kw}
        if "failure" not in kw and kw.get("status") in ("ok", "waiting"):
            self.status.pop("failure", None)
        atomic_write(self.status_file, dump_json(self.status))
