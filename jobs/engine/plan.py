"""Planning a run from the listing and the ledger: what is due, what changed, in which waves.

Cost grows with the work due, never with the archive: an input the ledger names with
every unit done is counted from the ledger (no read at all); one it names with units
left (a prompt added) is due for those units only; a new one is due for all of them. An
input whose size or version differs from its entry changed since it was processed: it
is named and not processed (its outputs would mix two versions).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace

from jobs.engine.ledger import Entry, InputFile, Wave, new_wave_id


@dataclass(frozen=True)
class Due:
    file: InputFile
    units: tuple[str, ...]


@dataclass
class Plan:
    listed: int = 0
    due: list[Due] = field(default_factory=list)
    done_rows: int = 0  # rows of inputs with nothing due: counted from the ledger, never read
    changed: list[tuple[InputFile, InputFile]] = field(default_factory=list)  # (now, as processed)


def diff(listed: list[InputFile], entries: dict[str, Entry], units: tuple[str, ...]) -> Plan:
    plan = Plan(listed=len(listed))
    for f in listed:
        entry = entries.get(f.uri)
        if entry is None:
            plan.due.append(Due(f, units))
        elif not entry.file.same_file(f):
            plan.changed.append((f, entry.file))
        elif left := tuple(u for u in units if u not in entry.units):
            plan.due.append(Due(replace(f, rows=entry.file.rows), left))
        else:
            plan.done_rows += entry.file.rows or 0
    return plan


def pack(chunks: list[list[Due]], wave_rows: int) -> list[Wave]:
    """Waves of at most `wave_rows` rows (a chunk larger than that is a wave of its own),
    each of inputs that share their due units. A chunk (inputs that one work item reads
    together) never straddles two waves."""
    by_units: dict[tuple[str, ...], list[list[Due]]] = defaultdict(list)
    for chunk in chunks:
        by_units[chunk[0].units].append(chunk)
    waves = []
    for units, group in by_units.items():
        current: list[InputFile] = []
        for chunk in group:
            rows = sum(d.file.rows or 0 for d in chunk)
            if current and sum(f.rows or 0 for f in current) + rows > wave_rows:
                waves.append(Wave(new_wave_id(), units, tuple(current)))
                current = []
            current += [d.file for d in chunk]
        if current:
            waves.append(Wave(new_wave_id(), units, tuple(current)))
    return waves


def chunks_of(due: list[Due], together: list[list[str]]) -> list[list[Due]]:
    """Due inputs grouped so that inputs read together (`together`: the inputs of each
    work item) land in one chunk; the rest one input a chunk, in listing order."""
    parent = {d.file.uri: d.file.uri for d in due}

    def root(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for uris in together:
        known = [u for u in uris if u in parent]
        for u in known[1:]:
            parent[root(u)] = root(known[0])
    groups: dict[str, list[Due]] = defaultdict(list)
    for d in due:
        groups[root(d.file.uri)].append(d)
    return list(groups.values())


def output_files(rows: int, rows_per_file: int) -> int:
    return math.ceil(rows / rows_per_file) if rows else 0
