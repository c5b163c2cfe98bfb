"""`codecsep separate`: code shards -> separated code shards, codes in, codes out.

The stage loads the masker and codec tables once per actor, never the codec's encoder or
decoder nor CLAP: prompt vectors are resolved once on the driver and shipped. One output
row per (clip, prompt, stem): the input row's columns with new `codes` (none with
`emit=scores`), plus `prompt`, `stem` ("target"; "residual" too with `--residual`: one
masker pass serves both), the curation scores, and where the prompt's source sounds
(`active_fraction`, `active_spans`, from the same pass). `--exclude TEXT` removes what it
names from every target (mask composition, `codecsep_core.separator.exclude_masks`). The
engine's runner reads the shards, resumes, writes and reports.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from codecsep_core import SeparatorConfig
from codecsep_core.activity import ActivityConfig
from codecsep_core.model_io import content_digest
from jobs import resolve
from jobs.engine import (
    ErrorRow,
    JobParser,
    JobReport,
    RayOptions,
    RunOptions,
    Shards,
    Stage,
    StageOutput,
    add_ray_arguments,
    digest,
    require,
    run_stage,
)
from storage import fs as sfs

log = logging.getLogger("codecsep.separate")

EMITS = ("codes", "scores")
SCORES_ROW_BYTES = 200.0  # a scores-only output row (measured by the bench: 67 bytes, plus spans)


def unit(stem: str, prompt: str) -> str:
    """The ledger's name of one (prompt, stem) of work."""
    return f"{stem}:{prompt}"


@dataclass(frozen=True)
class SeparateConfig:
    input: str | None = None  # URI of a folder of code shards (local, s3://, memory://)
    output: str | None = None  # URI of the output folder; errors go to <output>/_errors/
    prompts: list[str] = field(default_factory=list)
    masker: str | None = None  # masker checkpoint (.safetensors)
    codec_tables: str | None = None  # codec tables (.safetensors); or codec_weights, exported on the fly
    codec_weights: str | None = None  # a DAC checkpoint; null with no codec_tables: DAC's official 16 kHz download
    prompt_table: str | None = None  # prompt vectors; prompts missing from it are embedded with CLAP
    clap_checkpoint: str | None = None  # CLAP checkpoint for prompts not in the table (null: laion-clap's)
    exclude: list[str] = field(default_factory=list)  # negative prompts: removed from every target
    residual: bool = False  # also write each prompt's residual stem: everything but what it names
    emit: str = "codes"  # codes | scores (scores and activity only, no codes: a curation pass)
    separator: SeparatorConfig = field(default_factory=SeparatorConfig)
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    ray: RayOptions = field(default_factory=RayOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def check(self) -> None:
        require(self, ("input", "output", "masker"))
        if not self.prompts:
            raise ValueError("no prompts: pass --prompt TEXT (repeatable)")
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError(f"duplicate prompts: {self.prompts}")
        if set(self.exclude) & set(self.prompts):
            raise ValueError(f"prompts both wanted and excluded: {sorted(set(self.exclude) & set(self.prompts))}")
        if self.emit not in EMITS:
            raise ValueError(f"emit must be one of {EMITS}, got {self.emit!r}")


class SeparateStage(Stage):
    """Validate a batch of code rows, separate the good ones for every prompt."""

    name = "separate"
    key = "id"

    def __init__(self, masker: bytes, tables: bytes, vectors: np.ndarray, exclude: np.ndarray, cfg: SeparateConfig):
        self.masker_bytes, self.tables_bytes = masker, tables
        self.vectors, self.exclude_vectors, self.exclude_names = vectors, exclude, list(cfg.exclude)
        self.prompts, self.config, self.activity = list(cfg.prompts), cfg.separator, cfg.activity
        self.stems = ("target", "residual") if cfg.residual else ("target",)
        self.emit = cfg.emit
        self.due = set(self.units())

    @property
    def with_codes(self) -> bool:
        return self.emit == "codes"

    def units(self) -> tuple[str, ...]:
        """One unit of work per (prompt, stem): `target:speech`, `residual:speech`, ..."""
        return tuple(unit(stem, p) for p in self.prompts for stem in self.stems)

    def narrowed(self, units: tuple[str, ...]) -> SeparateStage:
        """Only these (prompt, stem) units: the masker runs for their prompts alone."""
        keep = [i for i, p in enumerate(self.prompts) if any(unit(stem, p) in units for stem in self.stems)]
        stage = copy.copy(self)
        stage.prompts = [self.prompts[i] for i in keep]
        stage.vectors = self.vectors[keep]
        stage.stems = tuple(stem for stem in self.stems if any(unit(stem, p) in units for p in stage.prompts))
        stage.due = set(units)
        return stage

    def settings(self) -> dict[str, str]:
        """Model files, the vector behind each prompt name, the excluded prompts, and every
        setting that changes the rows (not the batch size: it changes only the speed)."""
        separator = {f"separator.{k}": str(v) for k, v in asdict(self.config).items() if k != "batch_windows"}
        activity = {f"activity.{k}": str(v) for k, v in asdict(self.activity).items()}
        prompts = {f"prompt:{p}": digest(v.astype(np.float32).tobytes()) for p, v in zip(self.prompts, self.vectors)}
        return {
            "masker": content_digest(self.masker_bytes),
            "codec_tables": content_digest(self.tables_bytes),
            "exclude": ", ".join(f"{p}={digest(v.astype(np.float32).tobytes())}" for p, v in self.excluded()),
            "emit": self.emit,
            **separator,
            **activity,
            **prompts,
        }

    def excluded(self) -> list[tuple[str, np.ndarray]]:
        return sorted(zip(self.exclude_names, self.exclude_vectors), key=lambda pv: pv[0])

    def output_row_bytes(self, input_row_bytes: float) -> float:
        return input_row_bytes if self.with_codes else SCORES_ROW_BYTES

    def setup(self, device: str) -> None:
        import torch

        from codecsep_core import CodecTables, Separator, load_masker

        self.separator = Separator(
            CodecTables.load(self.tables_bytes), load_masker(self.masker_bytes).to(device), self.config
        )
        self.codec = self.separator.tables.info
        self.embeddings = torch.tensor(self.vectors)  # a copy: shipped arrays arrive read-only
        self.exclude = torch.tensor(self.exclude_vectors) if len(self.exclude_vectors) else None
        del self.masker_bytes, self.tables_bytes

    def process(self, batch: pa.Table) -> StageOutput:
        import torch

        from codecsep_core.chunked import separate_chunked
        from storage.schema import check_batch, separable_segments

        checked = check_batch(batch, self.codec)
        good = [i for i, c in enumerate(checked) if c.reason is None]
        ids = batch["id"].to_pylist()
        errors = [ErrorRow(ids[i], c.reason) for i, c in enumerate(checked) if c.reason is not None]
        if not good:
            return StageOutput(errors=errors)
        rows = batch.take(good)
        codes = [checked[i].codes for i in good]
        meta = rows.drop_columns(["codes"]).to_pylist()
        spans = [separable_segments(row, c.shape[1]) for row, c in zip(meta, codes)]
        t0 = time.perf_counter()
        results = separate_chunked(
            self.separator,
            [torch.from_numpy(c.astype(np.int64)) for c in codes],
            spans,
            self.embeddings,
            residual="residual" in self.stems,
            exclude=self.exclude,
        )
        tally = {
            "separate_s": time.perf_counter() - t0,
            "audio_s": float(np.sum(rows["n_samples"].to_numpy() / rows["sample_rate"].to_numpy())),
        }
        return StageOutput(rows=self._output_rows(rows, results), errors=errors, tally=tally)

    def _output_rows(self, rows: pa.Table, results) -> pa.Table:
        """One row per (clip, prompt, stem), prompt-major: input columns with new codes (or
        none), the scores of the stem, and where the prompt's source sounds."""
        from codecsep_core.activity import clip_activity
        from storage.schema import SCORE_COLUMNS, codes_to_arrow

        n, tables = rows.num_rows, []
        activity = [clip_activity(r.frame_kept, r.frame_energy, self.codec.frame_rate, self.activity) for r in results]
        base = rows if self.with_codes else rows.drop_columns(["codes"])
        for p, prompt in enumerate(self.prompts):
            for stem in self.stems:
                if unit(stem, prompt) not in self.due:
                    continue
                target = stem == "target"
                t = base
                if self.with_codes:
                    codes = [(r.codes if target else r.residual)[p].numpy().astype(np.uint16) for r in results]
                    t = t.set_column(t.schema.get_field_index("codes"), "codes", codes_to_arrow(codes))
                scores = [r.scores if target else r.residual_scores for r in results]
                values = {
                    "prompt": [prompt] * n,
                    "stem": [stem] * n,
                    "energy_kept": [float(sc["energy_kept"][p]) for sc in scores],
                    "mask_mean": [float(sc["mask_mean"][p]) for sc in scores],
                    "active_fraction": [a[p].fraction for a in activity],
                    "active_spans": [a[p].spans for a in activity],
                }
                for name, column in values.items():
                    t = t.append_column(SCORE_COLUMNS.field(name), pa.array(column, SCORE_COLUMNS.field(name).type))
                tables.append(t)
        return pa.concat_tables(tables)


def run(cfg: SeparateConfig) -> JobReport:
    from codecsep_core import masker_config, masker_prompt_encoder

    cfg.check()
    report = JobReport("separate")
    with report.stage("prompt_embeddings"):
        masker = sfs.read_bytes(cfg.masker)
        vectors, encoder = resolve.prompt_vectors(
            cfg.prompts + cfg.exclude,
            cfg.prompt_table,
            cfg.clap_checkpoint,
            masker_config(masker).cond_dim,
            masker_prompt_encoder(masker),
        )
    with report.stage("load_models"):
        tables = resolve.codec_tables(cfg.codec_tables, cfg.codec_weights)
    report.extra.update(prompts=list(cfg.prompts), exclude=list(cfg.exclude), prompt_encoder=encoder)
    n = len(cfg.prompts)
    stage = SeparateStage(masker, tables, vectors[:n], vectors[n:], cfg)
    return run_stage(stage, Shards(cfg.input), cfg.output, cfg.ray, cfg.run, report)


def parse_args(argv: list[str] | None) -> SeparateConfig:
    p = JobParser("separate", SeparateConfig, __doc__.splitlines()[0])
    p.add_argument("--input", help="URI of the code shards")
    p.add_argument("--output", help="URI of the separated shards")
    p.add_argument("--prompt", dest="prompts", action="append", default=[], help="repeatable")
    p.add_argument(
        "--exclude", action="append", default=[], help="negative prompt, removed from every target (repeatable)"
    )
    p.add_argument("--residual", action="store_true", default=None, help="also write each prompt's residual stem")
    p.add_argument("--emit", choices=EMITS, help="codes (default) or scores: scores and activity only, no codes")
    p.add_argument("--masker", help="masker checkpoint URI (.safetensors)")
    p.add_argument("--codec-tables", help="codec tables URI (.safetensors)")
    p.add_argument("--codec-weights", help="DAC checkpoint URI; tables exported on the fly")
    p.add_argument("--prompt-table", help="Parquet prompt table URI")
    add_ray_arguments(p, batch_help="clips per actor call")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep separate`: parse, run, print the report (exit codes: jobs.cli)."""
    run(parse_args(argv)).emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["separate", *sys.argv[1:]], program=True))
