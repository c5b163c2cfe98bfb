"""The stage model under every job that maps batches on Ray actors (docs/architecture.md).

A stage is what a job does to one batch of input rows, in the shape of NeMo Curator's
processing stages and Ray's batch-inference pattern: it declares its resources and the
column that identifies an input row (its key), loads its models once per actor in
`setup()`, and turns a batch into output rows and error rows in `process()`. Everything
else (listing and reading inputs, resume, `_errors`, the sink, progress, the tally, the
report, Ray settings) belongs to the engine's runner (`jobs.engine.runner`), written once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa


def digest(data: bytes) -> str:
    """A short digest of bytes a stage's outputs depend on (model weights, a prompt's
    vector), for `Stage.settings()`."""
    return hashlib.sha256(data).hexdigest()[:16]


class BadInput(ValueError):
    """An input that becomes an error row: the message is the row's reason, in words a user acts on."""


@dataclass(frozen=True)
class ErrorRow:
    """An input the stage could not process. `key` is the input row's key, so that resume
    skips it like a done row; `id` is the clip id of the error row when it is not the key,
    and `named=False` says there is none (a file with no rows to name)."""

    key: str
    reason: str
    source: str | None = None
    id: str | None = None
    prompt: str | None = None
    named: bool = True

    @property
    def clip_id(self) -> str | None:
        return None if not self.named else self.key if self.id is None else self.id


@dataclass
class StageOutput:
    """What `process` returns: output rows (carrying the stage's key column), error rows,
    and counters the runner sums over the job (e.g. `audio_s`, per-step seconds). `side`
    rows are written like output rows (to the folder `in_folder` bound them for) but are
    not counted as output: select's manifest entries. `done` names input keys that yield
    nothing and are done all the same (select's row with no active span)."""

    rows: pa.Table | None = None
    errors: list[ErrorRow] = field(default_factory=list)
    side: pa.Table | None = None
    done: list[str] = field(default_factory=list)
    tally: dict[str, float] = field(default_factory=dict)


class Stage:
    """Base class of a job's stage; subclasses are plain picklable objects built on the
    driver from their config, shipped to every actor, then `setup()` there."""

    name: ClassVar[str]  # the job's name: the `stage` column of its error rows
    key: ClassVar[str] = "id"  # column naming an input row, in inputs, outputs and resume
    # Sub-folders of the output its rows are written to ("": the output folder itself), each
    # with `in_folder`; what a fresh start (`run_stage(fresh=True)`) clears besides `_errors`.
    folders: ClassVar[tuple[str, ...]] = ("",)

    def units(self) -> tuple[str, ...]:
        """The units of work done for every input row, as the ledger records them per input
        (separate: one per prompt and stem); a run adds only the units an input lacks."""
        return (self.name,)

    def narrowed(self, units: tuple[str, ...]) -> Stage:
        """This stage doing only `units` (a subset of `units()`): a prompt added to a
        finished output runs for that prompt alone."""
        return self

    def prepare(self, due: pa.Table | None) -> None:
        """On the driver, once the due work is planned (`due`: a planned job's items) and
        before anything is written: resolve what depends on it (export loads the codec
        weights of the codecs its due rows name; nothing due, nothing loaded)."""

    def settings(self) -> dict[str, str]:
        """What the outputs depend on besides the units (model digests, settings), by
        name: an output made with other values refuses the run (`Ledger.claim`)."""
        return {}

    def output_row_bytes(self, input_row_bytes: float) -> float:
        """About how many bytes an output row takes, given an input row's: sizes the
        output files (`run.target_file_mb`)."""
        return input_row_bytes

    def setup(self, device: str) -> None:
        """Once per actor, before the first batch: load models onto `device` here."""

    def process(self, batch: pa.Table) -> StageOutput:
        raise NotImplementedError
