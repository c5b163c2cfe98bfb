"""What a job reads, as the runner plans it: Parquet shards under a URI, or work items a
job plans over the inputs it lists itself. Either way every input is a file of the
ledger (URI, size, version), and only the due ones are read or planned."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from jobs.engine.ledger import InputFile
from jobs.engine.stage import ErrorRow
from storage import fs as sfs
from storage import shards


@dataclass(frozen=True)
class Shards:
    """Every Parquet shard under `uri`, each an input of the ledger."""

    uri: str


@dataclass(frozen=True)
class Items:
    """Work items planned on the driver, one row each, carrying the stage's key column and,
    in the column `inputs`, the input it comes from (a URI, or a list of them when an item
    reads several: the first is where the ledger counts it). `errors` are the items the
    planner found to be errors already (duplicate ids, unreadable inputs), each with its
    input as `source`: they go to `_errors` and count as done like any error row."""

    table: pa.Table
    errors: list[ErrorRow] = field(default_factory=list)
    inputs: str = "source"

    @property
    def num_rows(self) -> int:
        return self.table.num_rows + len(self.errors)

    def item_inputs(self) -> list[list[str]]:
        if not self.table.num_rows:
            return []
        values = self.table[self.inputs].to_pylist()
        return [v if isinstance(v, list) else [v] for v in values]

    def rows_per_input(self) -> Counter:
        counts = Counter(uris[0] for uris in self.item_inputs())
        counts.update(e.source for e in self.errors if e.source is not None)
        return counts

    def of(
        self, uris: set[str], key: str, keys: frozenset[str] | None = None, planned: frozenset[str] | None = None
    ) -> Items:
        """The items counted under one of `uris` (only those of `keys`, when given), with
        the error items of those inputs and, given `planned` (every input of the run), the
        error items of no planned input."""
        first = [u[0] for u in self.item_inputs()]
        table = self.table.filter(pa.array([u in uris for u in first], pa.bool_())) if first else self.table
        errors = [e for e in self.errors if e.source in uris or (planned is not None and e.source not in planned)]
        if keys is not None:
            table = table.filter(pc.is_in(table[key].cast(pa.string()), pa.array(sorted(keys), pa.string())))
            errors = [e for e in errors if e.key in keys]
        return replace(self, table=table, errors=errors)


@dataclass(frozen=True)
class Planned:
    """Inputs a job lists itself (`listing`), and its planner of work items over the due
    ones: `plan(due, listed)` sees every listed input (e.g. to find ids taken twice) but
    plans items for the due ones only, so a run costs what is new."""

    listing: Callable[[], list[InputFile]]
    plan: Callable[[list[InputFile], list[InputFile]], Items]


def listed_files(uri: str, suffixes: tuple[str, ...] = (), s3: sfs.S3Options | None = None) -> list[InputFile]:
    """The files under `uri` as inputs of the ledger (size and version from the listing)."""
    return [InputFile(f.uri, f.size, f.version) for f in sfs.list_file_stats(uri, suffixes, s3)]


def with_footer_rows(files: list[InputFile], s3: sfs.S3Options) -> list[InputFile]:
    """Shards with their row counts, read from the footers of those the ledger does not
    know (two small ranged reads each, in parallel); a file that is not Parquet counts
    one row: the error row it becomes."""

    def rows(f: InputFile) -> InputFile:
        if f.rows is not None:
            return f
        return replace(f, rows=shards.footer_rows(f.uri, f.size, s3) or 1)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(rows, files))
