"""VM memory replication, pure parts as tables: migration streams as images, checkpoint
frames and diffs, the backup's acceptance rules, throttle curves and the buffer policy."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.desired.model import Components, DesiredState, Endophyte, NodeShare, Throttle
from agent.desired.throttle import level, next_step, qemu_percent
from agent.node.vm.checkpoint import (
    FrameError,
    Held,
    Reassembler,
    accept,
    changed_runs,
    decode,
    encode,
    page_runs,
    split,
)
from agent.node.vm.replicator import Replication, Replicator, backed_up_vms, replicated_vms
from agent.node.vm.stream import (
    BE32,
    BE64,
    END,
    F_CONTINUE,
    F_EOS,
    F_PAGE,
    F_ZERO,
    FOOTER,
    PAGE,
    PART,
    Snapshot,
    StreamError,
    parse,
    to_stream,
)
from support.checkpoints import frame, prefix, snap

P = PAGE


# --- migration streams ----------------------------------------------------------------------

def test_stream_round_trip_keeps_image_and_device_state():
    s = snap({0: 1, 3: 7, 7: 255})
    again = parse(to_stream(s))
    assert again.image == s.image and again.tail == s.tail and again.prefix == s.prefix
    assert again.blocks == s.blocks


def test_stream_in_fault_order_with_continue_across_sections():
    """Background snapshots send pages out of order; a section may continue the previous
    section's block without naming it."""
    sec = BE32.pack(2)
    data = prefix([("pc.ram", 4 * P), ("pc.bios", 2 * P)])
    data += bytes([PART]) + sec + BE64.pack(3 * P | F_PAGE) + b"\x06pc.ram" + b"\x05" * P
    data += BE64.pack(F_EOS) + bytes([FOOTER]) + sec
    data += bytes([PART]) + sec + BE64.pack(1 * P | F_PAGE | F_CONTINUE) + b"\x09" * P
    data += BE64.pack(0 | F_ZERO) + b"\x07pc.bios" + b"\0"
    data += BE64.pack(P | F_PAGE | F_CONTINUE) + b"\x02" * P
    data += BE64.pack(F_EOS) + bytes([FOOTER]) + sec
    data += bytes([END]) + sec + BE64.pack(F_EOS) + bytes([FOOTER]) + sec + b"\x00TAIL"
    s = parse(data)
    assert s.tail == b"\x00TAIL" and s.size == 6 * P
    assert s.image[3 * P] == 5 and s.image[P] == 9 and s.image[5 * P] == 2
    assert s.image[0] == 0 and s.image[4 * P] == 0


@pytest.mark.parametrize("mangle, why", [
    (lambda d: d[:-(P // 2)], "truncated"),
    (lambda d: b"XEVM" + d[4:], "no QEVM"),
    (lambda d: d.replace(b"\x06pc.ram\x00", b"\x06pc.rom\x00", 1)[:len(d)], "unknown RAM"),
])
def test_stream_refused(mangle, why):
    data = to_stream(snap({1: 1}))
    body = data[len(prefix([("pc.ram", 8 * P)])):]
    if why == "unknown RAM":  # rename the block in the page records only
        data = prefix([("pc.ram", 8 * P)]) + body.replace(b"\x06pc.ram", b"\x06pc.rom", 1)
    else:
        data = mangle(data)
    with pytest.raises(StreamError, match=why):
        parse(data)


def test_stream_with_compressed_pages_refused():
    data = prefix([("pc.ram", P)]) + bytes([PART]) + BE32.pack(2) + BE64.pack(0x100)
    with pytest.raises(StreamError, match="not supported"):
        parse(data)


# --- diffs and frames -----------------------------------------------------------------------

@pytest.mark.parametrize("old, new, runs", [
    ({}, {}, []),  # nothing changed
    (None, {0: 1, 1: 1, 5: 2}, [(0, 2 * P), (5 * P, P)]),  # full: every non-zero page
    ({0: 1, 1: 1}, {0: 1, 1: 1}, []),
    ({0: 1}, {0: 2, 2: 3}, [(0, P), (2 * P, P)]),
    ({}, {i: 1 for i in range(8)}, [(0, 3 * P), (3 * P, 3 * P), (6 * P, 2 * P)]),  # run cap 3
    ({3: 1}, {}, [(3 * P, P)]),  # a page zeroed is a change too
])
def test_changed_runs(old, new, runs):
    o = None if old is None else snap(old).image
    assert changed_runs(o, snap(new).image, run_pages=3) == runs


@pytest.mark.parametrize("old, new", [
    ({}, {}),
    ({0: 1, 1: 1}, {0: 1, 1: 1}),
    ({0: 1}, {0: 2, 2: 3}),
    ({3: 1, 4: 2}, {4: 2}),  # a page zeroed is a change too
    ({}, {i: 1 for i in range(8)}),
])
def test_parse_into_the_previous_image_finds_the_changed_pages(old, new):
    """What the primary does: the stream of the new checkpoint parsed into the previous
    image (shuffled, as a background snapshot sends pages in fault order) patches it into
    the new image and names exactly the pages changed_runs would."""
    image = bytearray(snap(old).image)
    want = changed_runs(image, snap(new).image, run_pages=3)
    pages: list[int] = []
    got = parse(to_stream(snap(new)), image, pages)
    assert got.image is image and image == snap(new).image
    assert page_runs(random.Random(7).sample(pages, len(pages)), run_pages=3) == want


def test_incremental_frame_carries_only_dirtied_pages():
    rnd = random.Random(15)
    a = snap({}, npages=256)
    a.image[:100 * P] = rnd.randbytes(100 * P)  # incompressible, like a busy guest
    b = Snapshot(a.prefix, a.blocks, a.ram_section, bytearray(a.image), a.tail)
    b.image[P:2 * P] = rnd.randbytes(P)
    b.image[200 * P:201 * P] = bytes([3]) * P
    full, inc = encode("db", "c1", 1, 0, a, None), encode("db", "c1", 2, 1, b, a.image)
    assert len(full) > 100 * P and len(inc) < 2 * P + 1000  # scales with what changed
    assert decode(inc).header.runs == 2
    image = bytearray(a.size)
    decode(full).apply(image)
    assert image == a.image
    decode(inc).apply(image)
    assert image == b.image


HELD = Held("c1", 4, 8 * P)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("data, held, why", [
    (frame(), HELD, None),  # the next in the chain
    (frame(seq=9, base=0, previous=None), HELD, None),  # a full one, whatever is held
    (frame(seq=1, base=0, previous=None), None, None),  # the first one
    (frame()[:-10], HELD, "sha256 mismatch"),  # truncated in the body
    (frame()[:30], HELD, "truncated"),  # truncated in the header
    (flip(frame(), len(frame()) - 5), HELD, "sha256 mismatch"),  # a bit flipped in a page
    (flip(frame(), 40), HELD, "garbled|sha256"),  # a bit flipped in the header
    (frame(vm="other"), HELD, "of VM 'other'"),  # another VM's
    (frame(chain="c0"), HELD, "another chain"),  # an older primary's
    (frame(seq=6, base=5), HELD, "5 on base|6 on base"),  # one was missed
    (frame(seq=7, base=4), HELD, "7 on base 4"),  # not base + 1
    (frame(), None, "nothing held"),  # a backup that lost its state
    (frame(snap=snap({1: 1}, npages=4), previous=bytes(4 * P)), HELD, "bytes"),  # resized
    (b"GET / HTTP/1.1\r\n", HELD, "not a checkpoint"),
    (frame() + b"extra", HELD, "sha256 mismatch"),
])
def test_backup_acceptance(data, held, why):
    if why is None:
        ck = accept(data, "db", held)
        assert ck.header.vm == "db"
    else:
        with pytest.raises(FrameError, match=why):
            accept(data, "db", held)


# --- throttling -----------------------------------------------------------------------------

LIN = Throttle("linear", 0.5)
EXP = Throttle("exponential", 0.5)
CUSTOM = Throttle("custom", 0.0, ((0.2, 0.0), (0.6, 0.5), (0.9, 1.0)))


@pytest.mark.parametrize("t, fill, want", [
    (LIN, 0.0, 0.0), (LIN, 0.5, 0.0), (LIN, 0.75, 0.5), (LIN, 1.0, 1.0), (LIN, 1.5, 1.0),
    (EXP, 0.5, 0.0), (EXP, 0.75, (2 ** 2.5 - 1) / 31), (EXP, 1.0, 1.0),
    (CUSTOM, 0.1, 0.0), (CUSTOM, 0.4, 0.25), (CUSTOM, 0.6, 0.5), (CUSTOM, 0.75, 0.75),
    (CUSTOM, 1.0, 1.0),
    (Throttle("custom", 0.0, ()), 0.9, 0.0),  # no points: never throttled
    (Throttle("linear", 1.0), 1.0, 0.0),  # threshold at the top: only the full buffer acts
])
def test_throttle_curves(t, fill, want):
    assert level(t, fill) == pytest.approx(want)


def test_exponential_is_gentler_than_linear_until_full():
    for fill in (0.6, 0.7, 0.8, 0.9):
        assert level(EXP, fill) < level(LIN, fill)


@pytest.mark.parametrize("lvl, pct", [(0.0, 0), (0.5, 50), (1.0, 99), (2.0, 99)])
def test_qemu_percent(lvl, pct):
    assert qemu_percent(lvl) == pct


@pytest.mark.parametrize("t, buffered, incoming, action, full, throttle", [
    (LIN, 0, 10, "send", False, 0.0),  # empty buffer
    (LIN, 60, 15, "send", False, 0.5),  # past the threshold: throttled
    (LIN, 90, 10, "send", False, 1.0),  # exactly full still fits
    (LIN, 95, 10, "pause", False, 1.0),  # over: emergency pause (the default)
    (Throttle("linear", 0.5, emergency_pause=False), 95, 10, "drop_oldest", True, 1.0),
])
def test_buffer_policy(t, buffered, incoming, action, full, throttle):
    step = next_step(t, buffered, 100, incoming)
    assert (step.action, step.send_full) == (action, full)
    assert step.throttle == pytest.approx(throttle)


# --- which VMs are replicated ---------------------------------------------------------------

@pytest.mark.parametrize("endophyte, components, backed, replicated", [
    (Endophyte("v", kernel="/k", backups=1, replication_interval_ms=500), Components(),
     {"v"}, {"v": Replication(0.5, Throttle())}),
    (Endophyte("v", kernel="/k", backups=0), Components(), set(), {}),  # no backups
    (Endophyte("v", image="/d.qcow2", backups=1), Components(),  # a disk: replicated too
     {"v"}, {"v": Replication(1.0, Throttle())}),
    (Endophyte("v", kernel="/k", backups=1), Components(ram_replication=False), set(), {}),
])
def test_replicated_vms(endophyte, components, backed, replicated):
    state = DesiredState("net", endophytes=(endophyte,), components=components)
    share = NodeShare("n", endophytes_primary=("v",), endophytes_backup=("v",))
    assert backed_up_vms(state, share) == backed
    assert replicated_vms(state, share) == replicated
    assert backed_up_vms(state, None) == set() and replicated_vms(None, share) == {}


# --- the primary's buffer, throttle and pause, with a backup that does not answer ------------

class FakeQmp:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def execute(self, command: str, arguments=None):
        self.sent.append(command)


@pytest.mark.parametrize("emergency_pause", [True, False])
def test_replicator_buffer_throttles_then_pauses_or_drops(tmp_path, emergency_pause):
    rnd = random.Random(7)
    gate = asyncio.Event()
    taken: list[int] = []
    levels: list[float] = []

    async def send(addr: str, name: str, data: bytes) -> int:
        await gate.wait()
        taken.append(decode(data).header.seq)
        return 200

    async def limit(lvl: float) -> None:
        levels.append(lvl)

    def fresh() -> Snapshot:
        s = snap({}, npages=8)
        s.image[:] = rnd.randbytes(8 * P)  # every page dirtied, incompressible
        return s

    size = len(encode("v", "c", 1, 0, fresh(), None))
    qmp = FakeQmp()

    async def go() -> Replicator:
        rep = Replicator("v", 1.0, tmp_path, lambda: None, lambda: ["b"], send,
                         throttle=Throttle("linear", 0.5, emergency_pause=emergency_pause),
                         limit=limit, buffer=int(3.5 * size))
        for _ in range(3):
            await rep.ship(fresh(), ["b"], qmp)
        assert rep.fill() == pytest.approx(3 * size / rep.capacity, rel=0.01)
        assert levels[0] > 0 and levels == sorted(levels) and rep.level > 0.6
        assert qmp.sent == [] and not rep.last["full"]
        await rep.ship(fresh(), ["b"], qmp)  # does not fit
        if emergency_pause:
            assert qmp.sent == ["stop"] and rep.paused and rep.dropped == 0
        else:
            assert qmp.sent == [] and rep.dropped == 3 and rep.last["full"]
        gate.set()
        while rep._boxes["b"].frames:
            await asyncio.sleep(0.01)
        await rep._regulate(qmp)
        rep.stop()
        return rep

    rep = asyncio.run(go())
    assert taken == ([1, 2, 3, 4] if emergency_pause else [1, 4])  # 2, 3 dropped, 4 full
    assert levels[-1] == 0.0 and not rep.paused
    assert qmp.sent == (["stop", "cont"] if emergency_pause else [])


# --- a frame split over parallel connections -------------------------------------------------

@pytest.mark.parametrize("order, whole", [
    ([0, 1, 2], True), ([2, 0, 1], True),  # parts arrive in any order
    ([0, 2], False),  # one missing: nothing yet
    ([0, 0, 1, 2], None),  # a part sent twice: still one frame
])
def test_parts_reassemble_into_the_frame(order, whole):
    data = frame()
    parts = split(data, 3, b"set1")
    r = Reassembler()
    got = [r.add(parts[i]) for i in order]
    if whole is False:
        assert got == [None, None]
    else:
        assert got[-1] == data and all(g is None for g in got[:-1])


def test_altered_part_makes_a_frame_that_is_refused():
    parts = split(frame(), 2, b"s")
    parts[1] = flip(parts[1], len(parts[1]) - 3)
    r = Reassembler()
    assert r.add(parts[0]) is None
    with pytest.raises(FrameError, match="sha256"):
        accept(r.add(parts[1]), "db", HELD)


def test_abandoned_part_sets_are_evicted():
    r = Reassembler()
    for k in range(5):
        assert r.add(split(frame(), 2, b"s%d" % k)[0]) is None
    assert len(r._sets) == 2
    with pytest.raises(FrameError):
        r.add(b"MYCPART1" + b"\0" * 3)


def test_backup_killed_mid_stream_resumes_or_resyncs(tmp_path):
    """The backup dies while frame 3 is on its way (the primary sees a transport error)
    and comes back from its files: it holds 2; the primary sends 4 full. A backup that
    restarted between two frames unnoticed takes the next incremental from its files."""
    from agent.errors import PeerError
    from agent.node.vm.replica import ReplicaStore

    rnd = random.Random(3)
    backup = {"store": ReplicaStore(tmp_path, "v"), "up": True}

    async def send(addr: str, name: str, data: bytes) -> int:
        if not backup["up"]:
            raise PeerError("connection reset")
        try:
            backup["store"].offer(data)
        except FrameError:
            return 409
        return 200

    def fresh(prev: Snapshot | None) -> Snapshot:
        s = snap({}, npages=16)
        if prev is not None:
            s.image[:] = prev.image
        s.image[rnd.randrange(16) * P:][:P] = rnd.randbytes(P)
        return s

    async def go() -> list[Snapshot]:
        rep = Replicator("v", 1.0, tmp_path, lambda: None, lambda: ["b"], send)
        snaps: list[Snapshot] = []

        async def ship(up: bool = True) -> None:
            backup["up"] = up
            snaps.append(fresh(snaps[-1] if snaps else None))
            await rep.ship(snaps[-1], ["b"])
            while rep._boxes["b"].frames:
                await asyncio.sleep(0.01)

        await ship()
        await ship()
        await ship(up=False)  # 3 lost with the backup
        backup["store"] = ReplicaStore(tmp_path, "v")  # restarted from its files
        assert backup["store"].held.seq == 2
        await ship()  # 4: full, since 3 failed
        assert rep.last["full"] and backup["store"].held.seq == 4
        backup["store"] = ReplicaStore(tmp_path, "v")  # restarted, unnoticed
        await ship()  # 5: incremental on 4, taken from the files
        assert not rep.last["full"] and backup["store"].held.seq == 5
        rep.stop()
        return snaps

    snaps = asyncio.run(go())
    assert backup["store"].snap.image == snaps[-1].image


def test_backup_reports_the_first_frame_of_its_chain(tmp_path):
    """A backup says how the chain it holds started (API `backups`: `chain_start`): a new
    primary's chain replaces the old one from its first, full, frame."""
    from agent.node.vm.replica import ReplicaStore

    store = ReplicaStore(tmp_path, "db")
    a, b = snap({1: 1}), snap({1: 2, 2: 3})
    store.offer(frame(chain="c1", seq=1, base=0, snap=a, previous=None))
    store.offer(frame(chain="c1", seq=2, base=1, snap=b, previous=a.image))
    s = store.status()
    assert (s["chain"], s["seq"], s["chain_start"]["seq"], s["chain_start"]["full"]) \
        == ("c1", 2, 1, True)
    full = frame(chain="c2", seq=1, base=0, snap=b, previous=None)
    store.offer(full)
    assert store.status()["chain_start"] == {"seq": 1, "full": True, "bytes": len(full),
                                             "at": store.taken_at}
    assert ReplicaStore(tmp_path, "db").status()["chain_start"] is None  # not kept on disk


def test_only_a_copys_first_start_resumes(tmp_path):
    """The resumed QEMU exits and is restarted: the restart boots cold (resuming again
    would roll the guest back to the failover's checkpoint)."""
    from agent.node.vm.spec import VmPaths, VmSpec
    from agent.node.vm.supervisor import VmSupervisor

    def resume(path):
        path.write_bytes(b"stream")
        return 7

    sup = VmSupervisor(VmSpec("v", 1, 64, kernel="k"), VmPaths(tmp_path / "v"), tmp_path,
                       resume=resume)
    assert asyncio.run(sup._incoming(None))[0][0] == "-incoming"
    assert sup.boot == "resumed from checkpoint 7"
    assert asyncio.run(sup._incoming(None)) == ([], None) and sup.boot == "cold"


def test_a_copy_that_resumed_with_its_disk_restarts_cold_on_that_disk(tmp_path):
    """With a disk, the restart boots cold from resume.qcow2, the disk the guest wrote to
    since the takeover, not from the node's own overlay (those writes would be lost)."""
    from agent.node.vm.spec import VmPaths, VmSpec
    from agent.node.vm.supervisor import VmSupervisor

    sup = VmSupervisor(VmSpec("v", 1, 64, kernel="k"), VmPaths(tmp_path / "v"), tmp_path,
                       resume_disk=lambda stream, out, base, fmt: 4)
    sup._resume_with_disk = lambda stream, out: 4  # no base image to fetch here
    overlay = tmp_path / "v" / "overlay.qcow2"
    args, disk = asyncio.run(sup._incoming(overlay))
    assert args[0] == "-incoming" and disk == tmp_path / "v" / "resume.qcow2"
    assert asyncio.run(sup._incoming(overlay)) == ([], tmp_path / "v" / "resume.qcow2")
    assert sup.boot == "cold"
    cold = VmSupervisor(VmSpec("v", 1, 64, kernel="k"), VmPaths(tmp_path / "w"), tmp_path)
    assert asyncio.run(cold._incoming(overlay)) == ([], overlay)  # never resumed: its own


def test_a_checkpoint_on_disk_older_than_a_copy_run_here_is_not_resumed(tmp_path):
    """The node took checkpoints as a backup, then ran the VM (a failover or a move): a
    later start here (a spec change, the agent restarted) boots cold, not from them."""
    import os

    from agent.node.vm.replica import ReplicaStore
    from agent.node.vm.runtime import VmRuntime

    rt = VmRuntime(tmp_path)
    ReplicaStore(rt.replica_root, "db").offer(frame(seq=1, base=0, previous=None))
    stream = tmp_path / "resume.stream"
    assert rt._resumer("db", None)(stream) == 1  # the agent restarted while a backup
    err = rt.paths("db").stderr
    err.parent.mkdir(parents=True)
    err.write_bytes(b"")
    taken = ReplicaStore(rt.replica_root, "db").taken_at
    os.utime(err, (taken - 5, taken - 5))  # it ran here before it was a backup
    assert rt._resumer("db", None)(stream) == 1
    os.utime(err, (taken + 5, taken + 5))  # and after: its memory moved on here
    assert rt._resumer("db", None)(stream) is None
