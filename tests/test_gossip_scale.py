"""Gossip that costs little when nothing changes (issue 16): the table's digest and bucket
sums, bucketed anti-entropy, stamps, the v2 wire format, and an idle network on virtual
time in which no record travels at all."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import replace

import pytest

from agent.gossip.latent import LatentSpore
from agent.gossip.memory import MemoryNetwork
from agent.gossip.swim import Member, Membership, Stamp, sync_period
from agent.gossip.table import LIVE, Snapshot, Table, buckets_for
from agent.gossip.wire import Message, MessageError, decode, fit
from support.vclock import run_virtual


def members(n: int, prefix: str = "m") -> list[Member]:
    return [Member(f"{prefix}{i}", f"{prefix}{i}:1", 1, meta={"v": i}) for i in range(n)]


def table(ms: list[Member]) -> Table:
    t = Table()
    for m in ms:
        t.put(m)
    return t


def test_digest_is_the_same_whatever_the_order_and_moves_with_a_ranked_change():
    ms = members(50)
    a, b = table(ms), table(list(reversed(ms)))
    assert a.total == b.total and list(a.sums) == list(b.sums)
    b.put(replace(ms[7], meta={"v": "other"}))  # unranked: meta without a new version
    assert a.total == b.total
    b.put(replace(ms[7], meta_version=1))
    assert a.total != b.total
    # the bucket sums say where: exactly one bucket differs, at any folding
    for nb in (1, 8, 64, 1024):
        sa, sb = Membership(ms[0]), Membership(ms[0])
        sa.members, sb.members = a, b
        diff = [i for i, (x, y) in enumerate(zip(sa.bucket_sums(nb), sb.bucket_sums(nb),
                                                 strict=True)) if x != y]
        assert len(diff) == 1
        assert [m.name for m in sb.in_buckets(nb, set(diff)) if m.name == "m7"] == ["m7"]


def test_a_shared_snapshot_is_copied_on_write():
    ms = members(20)
    snap = Snapshot.of(ms)
    a, b = Membership(ms[0], snapshot=snap), Membership(ms[1], snapshot=snap)
    assert len(a.members) == len(b.members) == 19 and "m0" not in a.members
    assert a.digest() == b.digest() == snap.total
    a.merge([replace(ms[5], state="suspect")], now=1.0)
    assert b.members["m5"].state == "alive" and snap.records["m5"].state == "alive"
    assert a.members.suspects == {"m5"} and a.members.live == 19
    assert a.digest() != b.digest()


def test_picks_are_live_and_every_member_is_probed_once_a_cycle():
    ms = members(40)
    t = table(ms)
    for m in ms[:10]:
        t.put(replace(m, state="dead"))
    rng = random.Random(3)
    for _ in range(50):
        picked = t.sample(rng, 3)
        assert len(picked) == 3 == len({m.name for m in picked})
        assert all(m.state in LIVE for m in picked)
    cycle = [t.next_probe(rng) for _ in range(30)]
    assert sorted(m.name for m in cycle if m) == sorted(m.name for m in ms[10:])
    assert t.sample(rng, 3, ("alive",), exclude="m20") and not Table().sample(rng, 3)


@pytest.mark.parametrize("n, every, want", [(3, 10, 10), (32, 10, 10), (100, 10, 30),
                                            (1000, 10, 60), (10_000, 10, 100)])
def test_anti_entropy_period_grows_with_log_n(n, every, want):
    assert sync_period(every, n) == want


def test_buckets_grow_with_the_network():
    assert [buckets_for(n) for n in (1, 10, 1000, 10_000, 10**6)] == [4, 16, 128, 512, 1024]


def test_stamps_send_our_record_back_and_refute_only_at_our_incarnation():
    ms = Membership(Member("me", "m:1", 5, meta_version=2))
    assert not ms.stale(Stamp(5, "alive", 2))
    assert ms.stale(Stamp(5, "alive", 1)) and ms.stale(None)
    assert ms.rumour(Stamp(9, "dead", 2)) == []  # a stamp cannot inflate our incarnation
    assert ms.me.incarnation == 5
    assert [e.kind for e in ms.rumour(Stamp(5, "suspect", 2))] == ["refuted"]
    assert ms.me.incarnation == 6


@pytest.mark.parametrize("data", [
    b'{"t":"ping"}', b'{"t":"ping","f":"a","m":[["a","a",1,"alive",0]]}',
    b'{"t":"ping","f":"a","m":[["a","a",-1,"alive",0,{}]]}',
    b'{"t":"ping","f":"a","y":[1,"zombie",0]}', b'{"t":"sync","f":"a","d":["00",4]}',
    b'{"t":"sync","f":"a","d":["0000000000000000",3]}',
    b'{"t":"ack","f":"a","b":"AAAA"}', b'{"t":"sync","f":"a","w":[4,[4]]}',
    b'{"t":"sync","f":"a","w":[2048,[0]]}'])
def test_malformed_v2_messages_refused(data):
    with pytest.raises(MessageError):
        decode(data)


def test_wire_round_trip_and_records_fit_the_cap():
    m = Message("sync", "a", tuple(members(3)), stamp=Stamp(1, "suspect", 2),
                digest=(2**64 - 1, 8), sums=(1, 2, 3, 4), want=(8, (0, 7)), more=True)
    assert decode(m.encode()) == m
    assert len(Message("ping", "n123", stamp=Stamp(1, "alive", 0)).encode()) <= 48
    big = [replace(x, meta={"pad": "x" * 1000}) for x in members(500)]
    kept, more = fit(big)
    assert more and 100 < len(kept) < 500


class Net:
    def __init__(self, n: int, loss: float = 0.0) -> None:
        self.net = MemoryNetwork(loss=loss, latency=0.002, seed=5)
        self.nodes = [LatentSpore(f"n{i}", f"n{i}", self.net.transport(f"n{i}"),
                                  interval=0.2, incarnation=1, seed=i,
                                  clock=asyncio.get_running_loop().time)
                      for i in range(n)]
        self.net.nodes.update((x.ms.me.name, x) for x in self.nodes)
        self.records = 0  # records carried by any message
        for x in self.nodes:
            self._count(x)

    def _count(self, node: LatentSpore) -> None:
        handle = node.handle

        async def counted(data: bytes, peer=None) -> bytes:
            self.records += len(decode(data).members)
            reply = await handle(data, peer)
            self.records += len(decode(reply).members)
            return reply

        node.handle = counted  # type: ignore[method-assign]


def test_an_idle_network_sends_no_records_and_agrees_on_one_digest():
    async def go() -> tuple[int, int, set[int]]:
        net = Net(40)
        async with contextlib.AsyncExitStack() as stack:
            for x in net.nodes:
                await stack.enter_async_context(x)
            await asyncio.gather(*(x.join(["n0"]) for x in net.nodes[1:]))
            for _ in range(200):
                if all(len(x.ms.members) == 39 for x in net.nodes) and len(
                        {x.ms.digest() for x in net.nodes}) == 1:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)  # news still owed retransmissions runs out
            net.records, b0 = 0, net.net.bytes
            await asyncio.sleep(10.0)  # 50 rounds, more than one anti-entropy period
            return net.records, net.net.bytes - b0, {x.ms.digest() for x in net.nodes}

    records, sent, digests = run_virtual(go())
    assert records == 0 and len(digests) == 1
    assert sent / 40 / 10.0 < 1000  # bytes per node per second, probes and digests only


def test_anti_entropy_repairs_a_difference_by_its_buckets_only():
    async def go() -> None:
        net = Net(2)
        a, b = net.nodes
        others = members(300, "x")
        a.ms.merge(others, 0.0)
        b.ms.merge(others, 0.0)
        a.ms.merge([replace(others[42], incarnation=2)], 0.0)  # a knows a newer record
        b.ms.merge([Member("late", "late:1", 1)], 0.0)  # b knows one a does not
        net.records = 0
        assert await a._sync("n1") is not None
        assert a.ms.digest() == b.ms.digest()
        assert b.ms.members["x42"].incarnation == 2 and "late" in a.ms.members
        assert net.records < 60  # the two buckets' records, not 300
        a._pending.clear(), b._pending.clear()  # news owed retransmissions, not repair
        net.records = 0
        await a._sync("n1", a.ms.members["n1"])  # the same now: digests only
        assert net.records == 0

    run_virtual(go())


def test_a_node_with_an_empty_table_catches_up_in_capped_messages():
    async def go() -> None:
        net = Net(2)
        a, b = net.nodes
        b.ms.merge([replace(x, meta={"pad": "x" * 1000}) for x in members(600, "x")], 0.0)
        assert await a._sync("n1") is not None
        assert a._again and 0 < len(a.ms.members) < 600  # the cap left some for later
        for _ in range(10):
            a._again = False
            await a._sync("n1")
        assert a.ms.digest() == b.ms.digest() and len(a.ms.members) == 601

    run_virtual(go())
