"""`codecsep select`: separated shards -> a code-shard dataset of the rows (or active spans) a prompt kept.

The output has the input code-shard schema, so `export` and `separate` read it: whole rows
whose scores pass the thresholds, or with `--spans` one row per active span, its codes
sliced to the span's frames (no decode) and its id derived from the source id and the span
(`storage.segments`). Codes come from the separated rows, or with `--codes-from` from the
original archive (for a scores-only pass, or to cut the mixture instead of the separated
target). A manifest, `_manifest.parquet`, lists every output row with its source id,
prompt, start/end seconds and scores.

A stage on the one runner: the driver reads only the score columns of the separated shards
the ledger says are due (and, when some rows are selected, the ids of the `--codes-from`
archive), in parallel threads, and plans one item per selected row; the stage reads the
codes it needs and returns the output rows with their manifest entries (to `_manifest/`,
which the driver gathers into `_manifest.parquet` at the end). The ledger, resume,
`_errors` and exactly-once are the runner's: one output folder holds one selection (its
settings are the output's, and a run with others is refused), and a rerun over a grown
separated dataset selects from the new shards only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.engine import (
    ErrorRow,
    InputFile,
    Items,
    JobParser,
    JobReport,
    Planned,
    RayOptions,
    RunOptions,
    Stage,
    StageOutput,
    add_ray_arguments,
    in_folder,
    listed_files,
    require,
    run_stage,
)
from storage import fs as sfs
from storage import segments, shards
from storage.schema import CODE_SHARD_SCHEMA, DAC_SHARD_SCHEMA, MalformedCodes, codes_to_numpy, table_from_rows

log = logging.getLogger("codecsep.select")

KEY = "_selected_id"  # the selected row's id: the stage's key (a private column, in no data file)
MANIFEST_PARTS = "_manifest"  # the runner's manifest rows, gathered into segments.MANIFEST_NAME
SELECTION_KEYS = ("input", "prompt", "stem", "min_active_fraction", "min_energy_kept", "spans", "codes_from")
MANIFEST_ROWS = segments.MANIFEST_SCHEMA.append(pa.field(KEY, pa.string()))
SCORE_COLUMNS = ("id", "prompt", "stem", "energy_kept", "mask_mean", "active_fraction", "active_spans")
# Columns of a separated row that describe the separation, not the clip: left out of the output.
SEPARATION_COLUMNS = ("prompt", "stem", "energy_kept", "mask_mean", "active_fraction", "active_spans")


@dataclass(frozen=True)
class SelectConfig:
    input: str | None = None  # URI of separated shards
    output: str | None = None  # URI of the segment dataset to write
    prompt: str | None = None
    min_active_fraction: float = 0.0
    min_energy_kept: float = 0.0
    spans: bool = False  # one row per active span instead of whole rows
    codes_from: str | None = None  # take codes from this code-shard archive (joined on id)
    stem: str = "target"  # rows of this stem, when the input has a `stem` column
    ray: RayOptions = field(default_factory=lambda: RayOptions(num_cpus_per_actor=1.0, batch_size=64))
    run: RunOptions = field(default_factory=RunOptions)

    def check(self) -> None:
        require(self, ("input", "output", "prompt"))
        if not 0 <= self.min_active_fraction <= 1 or self.min_energy_kept < 0:
            raise ValueError("min_active_fraction must be in [0, 1] and min_energy_kept non-negative")

    def needed_columns(self) -> tuple[str, ...]:
        return (
            ("id", "prompt", "energy_kept")
            + (("active_fraction",) if self.min_active_fraction > 0 else ())
            + (("active_spans",) if self.spans else ())
        )


# --------------------------------------------------------------------------- stage


class SelectStage(Stage):
    """Selected rows in (where their codes are and their scores), output rows and their
    manifest entries out."""

    name = "select"
    key = KEY
    folders = ("", MANIFEST_PARTS)

    def __init__(self, prompt: str, spans: bool, selection: dict[str, str]):
        self.prompt, self.spans, self.selection = prompt, spans, selection

    def settings(self) -> dict[str, str]:
        """One output folder holds one selection: a run with other settings is refused
        (otherwise the rows it selected would be skipped as done)."""
        return self.selection

    def setup(self, device: str) -> None:
        self._shard: tuple[str, pa.Table] | None = None  # the last shard read; items come sorted by shard

    def process(self, batch: pa.Table) -> StageOutput:
        rows, manifest, errors, done, audio_s = [], [], [], [], 0.0
        for item in batch.to_pylist():
            try:
                made = list(self._outputs(item))
            except (ValueError, KeyError, MalformedCodes) as e:
                reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                errors.append(ErrorRow(item[KEY], reason, item["codes_shard"], id=item["id"], prompt=self.prompt))
                continue
            for out, entry in made:
                rows.append({**out, KEY: item[KEY]})
                manifest.append({**entry, KEY: item[KEY]})
                audio_s += segments.clip_seconds(out)
            if not made:  # no span: still done, so that a rerun does not read it again
                done.append(item[KEY])
        table = (
            table_from_rows(rows, DAC_SHARD_SCHEMA if "dac_channels" in rows[0] else CODE_SHARD_SCHEMA)
            if rows
            else None
        )
        side = in_folder(pa.Table.from_pylist(manifest, MANIFEST_ROWS), MANIFEST_PARTS)
        return StageOutput(rows=table, errors=errors, side=side, done=done, tally={"audio_s": audio_s})

    def _clip(self, shard: str, index: int) -> dict:
        if self._shard is None or self._shard[0] != shard:
            self._shard = (shard, shards.read_table(shard))
        return self._shard[1].slice(index, 1).to_pylist()[0]

    def _outputs(self, item: dict) -> Iterator[tuple[dict, dict]]:
        """(output row, its manifest entry) for each row or span the item selects."""
        clip = self._clip(item["codes_shard"], item["codes_row"])
        if clip.get("codes") is None:
            raise ValueError("no codes: a scores-only row needs --codes-from ARCHIVE")
        codes = codes_to_numpy(clip["codes"])
        base = {k: v for k, v in clip.items() if k not in SEPARATION_COLUMNS}
        if not self.spans:
            yield {**base, "codes": codes}, segments.manifest_row(base["id"], item, 0.0, segments.clip_seconds(base))
            return
        for span in item["active_spans"] or []:
            out, start_s, end_s = segments.slice_row(base, codes, span, hop_length(clip["codec"]))
            yield out, segments.manifest_row(out["id"], item, start_s, end_s)


def hop_length(codec: str) -> int:
    from codecsep_core import DAC_CODECS

    if codec not in DAC_CODECS:
        raise ValueError(f"unknown codec {codec!r}: one of {sorted(DAC_CODECS)} expected")
    return DAC_CODECS[codec].hop_length


# --------------------------------------------------------------------------- planning


def selected_rows(cfg: SelectConfig, table: pa.Table) -> pa.Table:
    """The rows of one shard's score table for the prompt (and stem) whose scores pass."""
    keep = pc.field("prompt") == cfg.prompt
    if "stem" in table.column_names:
        keep &= pc.field("stem") == cfg.stem
    keep &= pc.field("energy_kept") >= cfg.min_energy_kept
    if cfg.min_active_fraction > 0:
        keep &= pc.field("active_fraction") >= cfg.min_active_fraction
    return table.filter(keep)


def plan_shard(cfg: SelectConfig, shard: str) -> tuple[int, pa.Table | str]:
    """-> (rows scanned, the selected rows with where their codes are | why the shard is unreadable)."""
    try:
        table = shards.read_present_columns(shard, SCORE_COLUMNS, required=cfg.needed_columns())
    except shards.MissingColumns as e:
        activity = " with activity columns" if cfg.spans or cfg.min_active_fraction > 0 else ""
        raise ValueError(f"{shard}: {e}: is it a separated dataset{activity}?") from None
    except pa.ArrowInvalid as e:
        return 0, f"unreadable shard (not Parquet): {e}"
    table = table.append_column("codes_row", pa.array(np.arange(table.num_rows), pa.int64()))
    picked = selected_rows(cfg, table)
    return table.num_rows, picked.append_column("codes_shard", pa.array([shard] * picked.num_rows, pa.string()))


def archive_index(uri: str) -> dict[str, tuple[str, int]]:
    """id -> (shard, row) of a code-shard archive, from its id columns alone."""
    files = shards.list_shards(uri)
    where: dict[str, tuple[str, int]] = {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        for shard, ids in zip(files, pool.map(lambda s: shards.read_present_columns(s, ["id"], ["id"]), files)):
            for row, clip_id in enumerate(ids["id"].to_pylist()):
                where.setdefault(clip_id, (shard, row))
    return where


def plan_items(cfg: SelectConfig, due: list[InputFile]) -> Items:
    """One item per selected row of the due shards, plus error items: unreadable shards,
    ids twice, ids missing from the archive. Each item counts under its separated shard."""
    files = [f.uri for f in due]
    with ThreadPoolExecutor(max_workers=16) as pool:
        planned = list(pool.map(lambda s: plan_shard(cfg, s), files))
    tables = [t for _, t in planned if isinstance(t, pa.Table)]
    selected = pa.concat_tables(tables, promote_options="permissive").to_pylist() if tables else []
    log.info("select: %d of %d rows selected for %r", len(selected), sum(n for n, _ in planned), cfg.prompt)
    index = archive_index(cfg.codes_from) if cfg.codes_from and selected else None
    items, errors, seen = [], [], set()
    for item in selected:
        shard = item["codes_shard"]
        if item["id"] in seen:
            errors.append(
                ErrorRow(f"{shard}#row{item['codes_row']}", f"duplicate id {item['id']!r}", shard, id=item["id"])
            )
        elif index is not None and item["id"] not in index:
            errors.append(ErrorRow(item["id"], f"id {item['id']!r} is not in the --codes-from archive", shard))
        else:
            if index is not None:
                item["codes_shard"], item["codes_row"] = index[item["id"]]
            items.append({**item, KEY: item["id"], "input_shard": shard})
        seen.add(item["id"])
    errors += [ErrorRow(s, t, s, named=False) for s, (_, t) in zip(files, planned) if isinstance(t, str)]
    items.sort(key=lambda it: (it["codes_shard"], it["codes_row"]))
    return Items(pa.Table.from_pylist(items), errors, inputs="input_shard")


def gather_manifest(output: str) -> str:
    """The manifest parts of every run, as one `_manifest.parquet` (sorted by id); -> its URI."""
    parts = sfs.join(output, MANIFEST_PARTS)
    rows = shards.read_table(parts).to_pylist() if sfs.exists(parts) else []
    return segments.write_manifest(output, rows)


def run(cfg: SelectConfig) -> JobReport:
    cfg.check()
    report = JobReport(SelectStage.name)
    report.extra.update(prompt=cfg.prompt, spans=cfg.spans)
    stage = SelectStage(cfg.prompt, cfg.spans, {k: str(getattr(cfg, k)) for k in SELECTION_KEYS})
    inputs = Planned(lambda: listed_files(cfg.input, (".parquet",)), lambda due, _: plan_items(cfg, due))
    run_stage(stage, inputs, cfg.output, cfg.ray, cfg.run, report)
    report.extra["manifest"] = gather_manifest(cfg.output)
    return report


def parse_args(argv: list[str] | None) -> SelectConfig:
    p = JobParser("select", SelectConfig, __doc__.splitlines()[0])
    p.add_argument("--input", help="URI of the separated shards")
    p.add_argument("--output", help="URI of the segment dataset to write")
    p.add_argument("--prompt", help="the prompt whose rows to select")
    p.add_argument("--min-active-fraction", type=float, help="keep rows whose active_fraction is at least this")
    p.add_argument("--min-energy-kept", type=float, help="keep rows whose energy_kept is at least this")
    p.add_argument("--spans", action="store_true", default=None, help="one output row per active span")
    p.add_argument("--codes-from", help="code-shard archive to take the codes from (joined on id)")
    add_ray_arguments(p, batch_help="selected rows per actor call")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep select`: parse, run, print the report (exit codes: jobs.cli)."""
    run(parse_args(argv)).emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["select", *sys.argv[1:]], program=True))
