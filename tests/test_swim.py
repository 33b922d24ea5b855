"""SWIM rules as tables, and clusters of LatentSpore nodes over the in-memory network."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from agent.gossip.latent import LatentSpore, MessageError, decode
from agent.gossip.memory import MemoryNetwork
from agent.gossip.swim import Member, Membership, outranks


@pytest.mark.parametrize("new, old, wins", [
    (("alive", 2), ("dead", 1), True),
    (("alive", 1), ("suspect", 1), False),
    (("suspect", 1), ("alive", 1), True),
    (("dead", 1), ("suspect", 1), True),
    (("dead", 1), ("alive", 2), False),
    (("left", 3), ("alive", 3), True),
])
def test_precedence(new, old, wins):
    assert outranks(Member("a", "x", new[1], new[0]), Member("a", "x", old[1], old[0])) is wins


def test_suspect_refuted_with_higher_incarnation():
    ms = Membership(Member("me", "m:1", 5))
    events = ms.merge([Member("me", "m:1", 5, "suspect")], now=1.0)
    assert [e.kind for e in events] == ["refuted"] and ms.me.incarnation == 6
    assert ms.lhm == 1  # being suspected raises local health multiplier


def test_probe_failure_suspects_then_dead_after_timeout():
    ms = Membership(Member("me", "m:1", 1))
    ms.merge([Member("b", "b:1", 1)], now=0.0)
    assert [e.kind for e in ms.probe_failed("b", 0.0)] == ["suspect"]
    assert ms.expire(0.1, interval=0.2) == []
    limit = ms.suspicion_timeout(0.2)
    assert [e.kind for e in ms.expire(limit + 0.01, interval=0.2)] == ["dead"]


def test_lifeguard_stretches_timeouts_and_recovers():
    ms = Membership(Member("me", "m:1", 1))
    base = ms.suspicion_timeout(0.2)
    ms.merge([Member("b", "b:1", 1)], now=0)
    for _ in range(3):
        ms.probe_failed("b", 0)
    assert ms.lhm == 3 and ms.suspicion_timeout(0.2) == pytest.approx(base * 4)
    for _ in range(5):
        ms.probe_ok("b", 0)
    assert ms.lhm == 0


def test_a_nack_from_a_helper_leaves_local_health_alone():
    """A helper answered (nack): our requests get through, the target is the silent one."""
    ms = Membership(Member("me", "m:1", 1))
    ms.merge([Member("b", "b:1", 1), Member("c", "c:1", 1)], now=0)
    assert [e.kind for e in ms.probe_failed("b", 0, helper_answered=True)] == ["suspect"]
    assert ms.lhm == 0
    ms.probe_failed("c", 0, helper_answered=False)
    assert ms.lhm == 1


def test_a_suspicion_keeps_the_timeout_it_began_with():
    """The only peer dies: every later probe fails and raises LHM, but the death already
    awaited is not pushed back by it (two-node networks took ~15 s to see a death)."""
    ms = Membership(Member("me", "m:1", 1))
    ms.merge([Member("b", "b:1", 1)], now=0)
    ms.probe_failed("b", 0.0)
    limit = ms.suspicion_timeout(0.2, lhm=0)
    for _ in range(5):  # later probes of the suspect fail too
        ms.probe_failed("b", 0.0)
    assert ms.lhm == 6 and ms.suspicion_timeout(0.2) > limit
    assert ms.expire(limit - 0.01, interval=0.2) == []
    assert [e.kind for e in ms.expire(limit + 0.01, interval=0.2)] == ["dead"]
    assert ms.expire(limit + 1, 0.2) == [] and ms.suspected_at_lhm == {}  # forgotten


def test_a_slow_node_gives_a_suspicion_it_hears_of_its_own_longer_timeout():
    """A suspicion gossiped to us is timed with our LHM when we first see it: a node that
    has been failing its probes (slow itself) waits longer before declaring anyone dead."""
    ms = Membership(Member("me", "m:1", 1))
    ms.merge([Member("b", "b:1", 1), Member("c", "c:1", 1)], now=0)
    for _ in range(2):
        ms.probe_failed("c", 0.0)  # c suspect, and we are slow: LHM 2
    ms.merge([Member("b", "b:1", 1, "suspect")], now=0.0)
    short = ms.suspicion_timeout(0.2, lhm=0)
    assert [e.name for e in ms.expire(short + 0.01, 0.2)] == ["c"]  # began at LHM 0
    assert ms.expire(2 * short, 0.2) == []  # b began at LHM 2: three times as long
    assert [e.name for e in ms.expire(3 * short + 0.01, 0.2)] == ["b"]


def test_newer_meta_wins_at_same_incarnation():
    ms = Membership(Member("me", "m:1", 1))
    ms.merge([Member("b", "b:1", 1, meta={"version": 1}, meta_version=1)], 0)
    ms.merge([Member("b", "b:1", 1, meta={"version": 3}, meta_version=3)], 0)
    ms.merge([Member("b", "b:1", 1, meta={"version": 2}, meta_version=2)], 0)
    assert ms.members["b"].meta == {"version": 3}


def test_restarted_member_meta_replaces_stale_meta():
    ms = Membership(Member("me", "m:1", 1))
    ms.merge([Member("b", "b:1", 1, meta={"version": 2}, meta_version=9)], 0)
    ms.merge([Member("b", "b:1", 5, meta={"version": 3}, meta_version=1)], 0)
    assert ms.members["b"].meta == {"version": 3}


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'{"type": "ping"}',
                                  b'{"type":"ping","from":"a","members":[{"name":1}]}',
                                  b'{"type":"boom","from":"a","members":[]}',
                                  b"x" * 300_000])
def test_malformed_messages_refused(data):
    with pytest.raises(MessageError):
        decode(data)


class Sim:
    def __init__(self, n: int, loss: float = 0.0, interval: float = 0.05) -> None:
        self.net = MemoryNetwork(loss=loss, seed=1)
        self.meta = {f"n{i}": {"version": 0} for i in range(n)}
        self.nodes = {}
        for i in range(n):
            name = f"n{i}"
            node = LatentSpore(name, name, self.net.transport(name), interval=interval,
                               get_meta=lambda name=name: dict(self.meta[name]),
                               incarnation=1, seed=i)
            self.nodes[name] = node
            self.net.nodes[name] = node

    async def __aenter__(self):
        self.stack = contextlib.AsyncExitStack()
        for n in self.nodes.values():
            await self.stack.enter_async_context(n)
        await asyncio.gather(*(n.join(["n0"]) for n in self.nodes.values()))
        return self

    async def __aexit__(self, *exc):
        await self.stack.aclose()

    def view(self, observer: str, name: str) -> str | None:
        m = self.nodes[observer].ms.members.get(name)
        return m.state if m else None

    async def until(self, pred, timeout: float = 10.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if pred():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("condition not reached")


def test_fifty_nodes_converge_detect_death_and_spread_version():
    async def go():
        async with Sim(50) as sim:
            others = lambda x: [n for n in sim.nodes if n != x]  # noqa: E731
            await sim.until(lambda: all(len(sim.nodes[n].ms.members) == 49 for n in sim.nodes))
            sim.net.down.add("n7")
            await sim.until(lambda: all(sim.view(o, "n7") == "dead" for o in others("n7")),
                            timeout=20)
            # a new state version spreads through meta to everyone alive
            sim.meta["n3"] = {"version": 4}
            await sim.until(lambda: all(
                sim.nodes[o].ms.members["n3"].meta.get("version") == 4
                for o in others("n3") if o != "n7"))
            # n7 comes back: the reconnect sync lets it refute and be alive again
            sim.net.down.discard("n7")
            await sim.until(lambda: all(sim.view(o, "n7") == "alive" for o in others("n7")),
                            timeout=20)
    asyncio.run(go())


def test_partition_then_heal():
    async def go():
        async with Sim(6) as sim:
            a, b = ["n0", "n1", "n2"], ["n3", "n4", "n5"]
            await sim.until(lambda: all(len(sim.nodes[n].ms.members) == 5 for n in sim.nodes))
            for x in a:
                for y in b:
                    sim.net.cut.add(frozenset((x, y)))
            await sim.until(lambda: sim.view("n0", "n4") == "dead"
                            and sim.view("n4", "n0") == "dead", timeout=20)
            sim.net.cut.clear()
            await sim.until(lambda: all(sim.view(x, y) == "alive" for x in sim.nodes
                                        for y in sim.nodes if x != y), timeout=20)
    asyncio.run(go())


def test_no_false_death_under_ten_percent_loss():
    async def go():
        async with Sim(10, loss=0.10) as sim:
            await sim.until(lambda: all(len(sim.nodes[n].ms.members) == 9 for n in sim.nodes))
            for _ in range(60):  # 3 s of rounds at 50 ms
                await asyncio.sleep(0.05)
                dead = [(o, n) for o in sim.nodes for n in sim.nodes
                        if o != n and sim.view(o, n) == "dead"]
                assert not dead, dead
    asyncio.run(go())


def test_rounds_on_a_monotonic_clock_show_last_seen_as_wall_time():
    """The agent runs gossip timers on time.monotonic (a wall-clock jump must neither fire
    nor stall a suspicion); what people see as last_seen is still wall time."""
    import time

    async def run() -> None:
        net = MemoryNetwork(seed=3)
        a = LatentSpore("a", "a", net.transport("a"), clock=time.monotonic, incarnation=1)
        b = LatentSpore("b", "b", net.transport("b"), clock=time.monotonic, incarnation=1)
        net.nodes.update(a=a, b=b)
        assert await a.join(["b"]) == 1
        seen = {v.name: v.last_seen for v in a.views()}
        assert abs(seen["a"] - time.time()) < 5 and abs(seen["b"] - time.time()) < 5
    asyncio.run(run())
