"""The follower's side of Raft's AppendEntries, where pysyncobj departs from the paper.

pysyncobj deletes every entry after `prevLogIdx` before appending what the leader sent,
without comparing (issue 12 §4: `truncating already-applied log entries`). A delayed or
repeated message, or a heartbeat from a leader whose next index for us fell behind,
therefore cut entries this node had already applied, and with them its commit index.
Raft truncates only from the first entry that conflicts (same index, other term), and
never below the commit index: entries up to it are committed and so in every later
leader's log. `skip_known` rewrites such a message into the one that says only what is
new; pysyncobj then truncates nothing it should keep. Pure: no pysyncobj import.
"""

from __future__ import annotations

from typing import Any

Entry = tuple[Any, int, int]  # (command, index, term), as pysyncobj stores them


def skip_known(prev_idx: int, entries: list[Entry], ours: list[Entry],
               commit: int) -> tuple[int, int, list[Entry]] | None:
    """`ours`: this node's log from `prev_idx` on, whose first entry already matched the
    leader's `prevLogTerm`. Returns (prevLogIdx, prevLogTerm, entries) for the message
    pysyncobj should see, or None to leave it as it is."""
    held = {e[1]: e for e in ours}
    k = 0
    while k < len(entries) and (o := held.get(entries[k][1])) is not None \
            and o[2] == entries[k][2]:
        k += 1  # already here, same term: the same entry (Raft's log matching property)
    last = entries[k - 1][1] if k else prev_idx
    rest = entries[k:]
    if not rest:  # nothing new: what we hold up to our commit index stays too
        last = max(last, min(commit, ours[-1][1]))
    if last == prev_idx:
        return None
    return last, held[last][2], rest
