"""The ledger of completed work per input, beside the output (`<output>/_ledger/`).

A run lists its inputs and reads the ledger; only inputs it does not name (new), or
names with some work still due (a prompt added since), are planned (DESIGN.md §7). An
entry says: this input (URI, size, version: ETag or modification time), of so many rows,
had these units of work done (a job's units: separate's `target:speech`, ... ; one unit
for the other jobs). Entries are appended as Parquet part files after the work they
record is committed, and compacted into one file every `COMPACT_AFTER` parts, so a run
reads a few files whatever the archive's history. The ledger grows with inputs (one
entry per input and run that added work), never with rows.

Beside the entries:
- `settings.json`: what made the outputs (model file digests, prompt vectors, separation
  settings). A run whose settings differ from it is refused (`claim`): its outputs would
  mix in another model's.
- `inflight.json`: the wave being run (its inputs and units), so that a run after a crash
  finishes that wave first, with Ray Data's row-level checkpoint, before planning more.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from jobs.engine.errors import UsageError
from storage import fs as sfs
from storage import shards

log = logging.getLogger("codecsep.ledger")

LEDGER_DIR = "_ledger"
SETTINGS_FILE = "settings.json"
INFLIGHT_FILE = "inflight.json"
COMPACT_AFTER = 8

ENTRY_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("version", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("units", pa.list_(pa.string())),
        pa.field("wave", pa.string()),
    ]
)


@dataclass(frozen=True)
class InputFile:
    """One input of a job: a listed file (or a planned item standing for one) and, once
    known, how many rows (work items) it holds."""

    uri: str
    size: int
    version: str
    rows: int | None = None

    def same_file(self, other: InputFile) -> bool:
        return (self.size, self.version) == (other.size, other.version)


@dataclass(frozen=True)
class Entry:
    """What the ledger knows of one input: the file it was, and every unit done for it."""

    file: InputFile
    units: frozenset[str]


@dataclass(frozen=True)
class Wave:
    """A bounded piece of due work: inputs that share the same units due, run as one Ray
    Data pipeline and committed to the ledger together. `retry_keys`: only these input
    rows (the failed ones of earlier runs) are due."""

    id: str
    units: tuple[str, ...]
    inputs: tuple[InputFile, ...]
    retry_keys: tuple[str, ...] | None = None
    retired_errors: tuple[str, ...] = ()  # error files this wave replaces (--retry-errors)

    @property
    def rows(self) -> int:
        return sum(f.rows or 0 for f in self.inputs)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Wave:
        raw = json.loads(data)
        inputs = tuple(InputFile(**f) for f in raw.pop("inputs"))
        keys = raw.pop("retry_keys")
        return cls(
            inputs=inputs,
            units=tuple(raw.pop("units")),
            retry_keys=None if keys is None else tuple(keys),
            retired_errors=tuple(raw.pop("retired_errors")),
            **raw,
        )


def new_wave_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


@dataclass
class Ledger:
    output: str
    s3: sfs.S3Options = field(default_factory=sfs.S3Options)

    @property
    def folder(self) -> str:
        return sfs.join(self.output, LEDGER_DIR)

    # ------------------------------------------------------------ entries

    def parts(self) -> list[str]:
        return shards.list_shards(self.folder, self.s3) if sfs.exists(self.folder, self.s3) else []

    def entries(self) -> dict[str, Entry]:
        """uri -> what is done for it. Entries of one file (size, version) add up; an input
        rewritten since keeps the entry of what was done, so a run can tell it changed."""
        found: dict[str, Entry] = {}
        for part in self.parts():
            for row in shards.read_table(part, s3=self.s3).to_pylist():
                file = InputFile(row["uri"], row["size"], row["version"], row["rows"])
                known = found.get(file.uri)
                units = frozenset(row["units"])
                if known is not None and known.file.same_file(file):
                    units |= known.units
                found[file.uri] = Entry(file, units)
        return found

    def waves_committed(self) -> set[str]:
        return {w for part in self.parts() for w in shards.read_table(part, ["wave"], s3=self.s3)["wave"].to_pylist()}

    def commit(self, wave: Wave, rows: dict[str, int]) -> None:
        """Record the wave's inputs as done for its units (rows: per input, as read)."""
        table = pa.Table.from_pylist(
            [
                {
                    "uri": f.uri,
                    "size": f.size,
                    "version": f.version,
                    "rows": rows.get(f.uri, f.rows or 0),
                    "units": list(wave.units),
                    "wave": wave.id,
                }
                for f in wave.inputs
            ],
            ENTRY_SCHEMA,
        )
        shards.write_table_atomic(sfs.join(self.folder, f"part-{time.time_ns():020d}.parquet"), table, self.s3)
        self.compact()

    def compact(self) -> None:
        """Many parts -> one, written before the parts it replaces are deleted (a reader in
        between sees both, and entries add up)."""
        parts = self.parts()
        if len(parts) < COMPACT_AFTER:
            return
        merged = pa.concat_tables([shards.read_table(p, s3=self.s3) for p in parts])
        shards.write_table_atomic(sfs.join(self.folder, f"part-{time.time_ns():020d}.parquet"), merged, self.s3)
        for part in parts:
            fs, path = sfs.resolve(part, self.s3)
            fs.rm_file(path)

    # ------------------------------------------------------------ settings

    def claim(self, settings: dict[str, str], write: bool = True) -> None:
        """Refuse settings that differ from those the output was made with (exit 2, naming
        each); record new ones (a prompt added) unless `write` is False (a dry run)."""
        uri = sfs.join(self.folder, SETTINGS_FILE)
        held = json.loads(sfs.read_bytes(uri, self.s3)) if sfs.exists(uri, self.s3) else {}
        differ = [k for k in sorted(settings) if k in held and held[k] != settings[k]]
        if differ:
            lines = "; ".join(f"{k}: {held[k]!r} there, {settings[k]!r} now" for k in differ)
            raise UsageError(
                f"{self.output} holds outputs made with other settings ({lines}): their rows would mix. "
                "Write to a new output folder (--output), or run with the settings it was made with"
            )
        if write and any(k not in held for k in settings):
            sfs.write_bytes_atomic(uri, json.dumps({**held, **settings}, indent=1, sort_keys=True).encode(), self.s3)

    # ------------------------------------------------------------ the wave in flight

    def inflight(self) -> Wave | None:
        uri = sfs.join(self.folder, INFLIGHT_FILE)
        return Wave.from_json(sfs.read_bytes(uri, self.s3)) if sfs.exists(uri, self.s3) else None

    def start(self, wave: Wave) -> None:
        sfs.write_bytes_atomic(sfs.join(self.folder, INFLIGHT_FILE), wave.to_json(), self.s3)

    def finish(self) -> None:
        uri = sfs.join(self.folder, INFLIGHT_FILE)
        if sfs.exists(uri, self.s3):
            fs, path = sfs.resolve(uri, self.s3)
            fs.rm_file(path)

    def forget(self) -> None:
        sfs.remove(self.folder, self.s3)
