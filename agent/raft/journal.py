"""Crash safety of pysyncobj's on-disk journal around log compaction.

pysyncobj compacts by writing a full dump (state at applied entry X) and then, on a later
tick, cutting the journal to the entries after X. Two gaps lose committed entries when a
process is killed:

- between the dump landing and the journal being cut, the journal on disk still starts
  before X; at the next start pysyncobj sees that its first entries are not the dump's
  and *clears the whole journal*, dropping every entry after X (found by
  tests/test_primary_crash.py, killing all three nodes at once);
- the cut itself clears the file and re-appends the kept entries one by one, so a kill in
  the middle leaves a journal missing its tail.

`align_journal` closes the first gap before pysyncobj opens the files; `SafeFileJournal`
closes the second by writing the cut journal to a new file and renaming it into place.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import pysyncobj.pickle as pickle
import pysyncobj.syncobj
from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET, FileJournal

from agent.errors import DataError

Entry = tuple[bytes, int, int]  # (command, index, term), as pysyncobj stores them


def _read_dump_entries(dump: Path) -> tuple[Entry, Entry] | None:
    """The two journal entries a full dump ends with (the applied one last), if readable."""
    try:
        with gzip.open(dump, "rb") as g:
            data = pickle.load(g)
        return tuple(data[2]), tuple(data[1])  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - no dump, or a partial one: pysyncobj decides
        return None


def _rewrite(path: Path, entries: list[Entry]) -> None:
    """Replace the journal at `path` by one holding exactly `entries`, atomically."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    j = FileJournal(str(tmp))
    for e in entries:
        j.add(*e)
    j._destroy()  # flushes the mmap and closes
    meta = Path(str(tmp) + ".meta")
    meta.unlink(missing_ok=True)  # the real journal's meta (term, vote) stays as it is
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def align_journal(journal: Path, dump: Path) -> int:
    """Drop journal entries the dump already holds, so pysyncobj keeps the rest.

    Returns how many entries were dropped (0 when the journal already starts at the dump
    or does not contain the dump's entries at all: then pysyncobj's own rule applies)."""
    if not (journal.exists() and dump.exists()):
        return 0
    ends = _read_dump_entries(dump)
    if ends is None:
        return 0
    j = FileJournal(str(journal))
    entries = [j[i] for i in range(len(j))]
    j._destroy()
    for i in range(1, len(entries) - 1):
        if entries[i] == ends[0] and entries[i + 1] == ends[1]:
            _rewrite(journal, entries[i:])
            return i
    return 0


class SafeFileJournal(FileJournal):
    """FileJournal whose compaction cut is a new file renamed into place."""

    def __init__(self, journal_file: str) -> None:
        self._path = journal_file
        _check_length(Path(journal_file))
        try:
            super().__init__(journal_file)
        except (struct.error, ValueError, EOFError, IndexError) as e:  # torn or corrupt
            raise DataError(f"Raft journal {journal_file} is corrupt ({e}); stop the node "
                            f"and remove {Path(journal_file).parent} to rejoin the Raft "
                            "cluster from its leader") from e

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802 - pysyncobj's name
        kept = [self[i] for i in range(entryTo, len(self))]
        meta: dict[str, Any] = self._FileJournal__meta  # type: ignore[attr-defined]
        saved: bool = self._FileJournal__metaSaved  # type: ignore[attr-defined]
        self._FileJournal__journalFile._destroy()  # type: ignore[attr-defined]
        _rewrite(Path(self._path), kept)
        super().__init__(self._path)
        # Keep the in-memory commit index even if it was not stored yet.
        self._FileJournal__meta, self._FileJournal__metaSaved = meta, saved


def _check_length(path: Path) -> None:
    """pysyncobj reads records up to the end its header records and pads a short file
    with zeros, so a journal cut inside its last record loaded that entry cut short, in
    silence (tests/test_torn_files.py, when the cut fell there). Refuse a file shorter than
    its header says."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(FIRST_RECORD_OFFSET)
    except FileNotFoundError:
        return  # a new journal
    end = struct.unpack("<I", head[LAST_RECORD_OFFSET_OFFSET:LAST_RECORD_OFFSET_OFFSET + 4])[0] \
        if len(head) == FIRST_RECORD_OFFSET else None
    if end is None or size < end:
        raise DataError(f"Raft journal {path} is truncated ({size} bytes, its records end at "
                        f"{end if end is not None else 'an unreadable header'}); stop the "
                        f"node and remove {path.parent} to rejoin the Raft cluster from its "
                        "leader")


def _create_journal(journal_file: str | None = None):  # noqa: ANN202 - pysyncobj's type
    from pysyncobj.journal import MemoryJournal

    return MemoryJournal() if journal_file is None else SafeFileJournal(journal_file)


# SyncObj builds its journal through this module-level name; every SyncObj in a mycelium
# process is a PrimaryStore, so the safe journal is installed for all of them.
pysyncobj.syncobj.createJournal = _create_journal
