"""`codecsep select`: separated shards -> a code-shard dataset of the rows (or active spans) a prompt kept.

The output has the input code-shard schema, so `export` and `separate` read it: whole rows
whose scores pass the thresholds, or with `--spans` one row per active span, its codes
sliced to the span's frames (no decode) and its id derived from the source id and the span
(`storage.segments`). Codes come from the separated rows, or with `--codes-from` from the
original archive (for a scores-only pass, or to cut the mixture instead of the separated
target). A manifest, `_manifest.parquet`, lists every output row with its source id,
prompt, start/end seconds and scores. Rerunning writes the same shards and ids.

This runs on the driver with pyarrow, one input shard at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from jobs import config as job_config
from jobs.runtime import JobReport, run_cli
from storage import segments, shards
from storage.schema import CODE_SHARD_SCHEMA, DAC_SHARD_SCHEMA, MalformedCodes, codes_to_numpy, table_from_rows

log = logging.getLogger("codecsep.select")

STAGE = "select"
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

    def check(self) -> None:
        job_config.require(self, ("input", "output", "prompt"))
        if not 0 <= self.min_active_fraction <= 1 or self.min_energy_kept < 0:
            raise ValueError("min_active_fraction must be in [0, 1] and min_energy_kept non-negative")


def selected_rows(cfg: SelectConfig, table: pa.Table) -> pa.Table:
    """The rows of one separated shard for the prompt (and stem) whose scores pass."""
    names = table.column_names
    needed = ["prompt", "energy_kept"] + (["active_fraction"] if cfg.min_active_fraction > 0 else [])
    needed += ["active_spans"] if cfg.spans else []
    missing = [c for c in needed if c not in names]
    if missing:
        activity = {"active_spans", "active_fraction"} & set(missing)
        raise ValueError(
            f"the input lacks column(s) {missing}: is it a separated dataset"
            f"{' with activity columns' if activity else ''}?"
        )
    keep = pc.field("prompt") == cfg.prompt
    if "stem" in names:
        keep &= pc.field("stem") == cfg.stem
    keep &= pc.field("energy_kept") >= cfg.min_energy_kept
    if cfg.min_active_fraction > 0:
        keep &= pc.field("active_fraction") >= cfg.min_active_fraction
    return table.filter(keep)


class ArchiveCodes:
    """Rows of a code-shard archive by id, reading only the shards that hold asked ids."""

    def __init__(self, uri: str):
        self.where: dict[str, str] = {}
        for shard, ids in shards.iter_shards(uri, columns=["id"]):
            for clip_id in ids["id"].to_pylist():
                self.where.setdefault(clip_id, shard)
        self._cache: tuple[str, dict[str, dict]] | None = None

    def row(self, clip_id: str) -> dict:
        shard = self.where.get(clip_id)
        if shard is None:
            raise KeyError(f"id {clip_id!r} is not in the --codes-from archive")
        if self._cache is None or self._cache[0] != shard:
            table = shards.read_table(shard)
            self._cache = (shard, {r["id"]: r for r in table.to_pylist()})
        return self._cache[1][clip_id]


def output_rows(cfg: SelectConfig, rows: list[dict], archive: ArchiveCodes | None) -> Iterator[tuple[dict, dict | str]]:
    """(separated row, output row and its manifest entry | the reason it cannot be made)."""
    for row in rows:
        try:
            clip = archive.row(row["id"]) if archive is not None else row
            if clip.get("codes") is None:
                raise ValueError("no codes: a scores-only row needs --codes-from ARCHIVE")
            codes = codes_to_numpy(clip["codes"])
            base = {k: v for k, v in clip.items() if k not in SEPARATION_COLUMNS}
            if not cfg.spans:
                out = {**base, "codes": codes}
                yield row, (out, segments.manifest_row(out["id"], row, 0.0, segments.clip_seconds(out)))
                continue
            for span in row["active_spans"] or []:
                out, start_s, end_s = segments.slice_row(base, codes, span, hop_length(clip["codec"]))
                yield row, (out, segments.manifest_row(out["id"], row, start_s, end_s))
        except (ValueError, KeyError, MalformedCodes) as e:
            yield row, str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


def hop_length(codec: str) -> int:
    from codecsep_core import DAC_CODECS

    if codec not in DAC_CODECS:
        raise ValueError(f"unknown codec {codec!r}: one of {sorted(DAC_CODECS)} expected")
    return DAC_CODECS[codec].hop_length


def run(cfg: SelectConfig) -> JobReport:
    cfg.check()
    t0 = time.perf_counter()
    report = JobReport(STAGE)
    archive = None
    if cfg.codes_from:
        with report.stage("index_archive"):
            archive = ArchiveCodes(cfg.codes_from)
    manifest, errors, audio_s = [], [], 0.0
    with shards.ShardWriter(cfg.output, STAGE) as writer:
        for shard, table in shards.iter_shards(cfg.input):
            if archive is not None and "codes" in table.column_names:
                table = table.drop_columns(["codes"])  # the archive's codes are used
            picked = selected_rows(cfg, table)
            report.rows_in += table.num_rows
            good = []
            for row, made in output_rows(cfg, picked.to_pylist(), archive):
                if isinstance(made, str):
                    errors.append(
                        {"id": row["id"], "source": shard, "stage": STAGE, "prompt": cfg.prompt, "reason": made}
                    )
                    continue
                good.append(made[0])
                manifest.append(made[1])
                audio_s += made[0]["n_samples"] / made[0]["sample_rate"]
            if good:
                schema = DAC_SHARD_SCHEMA if "dac_channels" in good[0] else CODE_SHARD_SCHEMA
                writer.write(table_from_rows(good, schema))
    manifest_uri = segments.write_manifest(cfg.output, manifest)
    shards.write_errors(cfg.output, errors, STAGE)
    report.rows_out, report.errors = len(manifest), len(errors)
    report.audio_hours = audio_s / 3600
    report.wall_s = time.perf_counter() - t0
    report.extra = {"output": cfg.output, "manifest": manifest_uri, "prompt": cfg.prompt, "spans": cfg.spans}
    return report


def parse_args(argv: list[str] | None) -> SelectConfig:
    p = job_config.JobParser("select", SelectConfig, __doc__.splitlines()[0])
    p.add_argument("--input", help="URI of the separated shards")
    p.add_argument("--output", help="URI of the segment dataset to write")
    p.add_argument("--prompt", help="the prompt whose rows to select")
    p.add_argument("--min-active-fraction", type=float, help="keep rows whose active_fraction is at least this")
    p.add_argument("--min-energy-kept", type=float, help="keep rows whose energy_kept is at least this")
    p.add_argument("--spans", action="store_true", default=None, help="one output row per active span")
    p.add_argument("--codes-from", help="code-shard archive to take the codes from (joined on id)")
    return p.parse_config(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli(STAGE, lambda: run(parse_args(argv)).emit(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
