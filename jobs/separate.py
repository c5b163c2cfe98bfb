"""`codecsep separate`: code shards -> separated code shards, codes in, codes out.

The stage loads the masker and codec tables once per actor, never the codec's encoder or
decoder nor CLAP: prompt vectors are resolved once on the driver and shipped. One output
row per (clip, prompt): the input row's columns with new `codes`, plus `prompt` and the
curation scores. The runner (jobs.runner) reads the shards, resumes, writes and reports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from codecsep_core import SeparatorConfig
from jobs import config as job_config
from jobs import resolve
from jobs.runner import Shards, run_stage
from jobs.runtime import JobReport, RayOptions, RunOptions, add_ray_arguments, ray_values, run_cli, setup_logging
from jobs.stage import ErrorRow, Stage, StageOutput
from jobs.sources import SOURCE
from storage import fs as sfs

log = logging.getLogger("codecsep.separate")


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
    separator: SeparatorConfig = field(default_factory=SeparatorConfig)
    ray: RayOptions = field(default_factory=RayOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def check(self) -> None:
        missing = [k for k in ("input", "output", "masker") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (flags --{' --'.join(missing)})")
        if not self.prompts:
            raise ValueError("no prompts: pass --prompt TEXT (repeatable)")
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError(f"duplicate prompts: {self.prompts}")


class SeparateStage(Stage):
    """Validate a batch of code rows, separate the good ones for every prompt."""

    name = "separate"
    key = "id"

    def __init__(self, masker: bytes, tables: bytes, prompts: list[str], vectors: np.ndarray, config: SeparatorConfig):
        self.masker_bytes, self.tables_bytes = masker, tables
        self.prompts, self.vectors, self.config = list(prompts), vectors, config

    def setup(self, device: str) -> None:
        import torch

        from codecsep_core import CodecTables, Separator, load_masker

        self.separator = Separator(CodecTables.load(self.tables_bytes), load_masker(self.masker_bytes).to(device), self.config)
        self.codec = self.separator.tables.info
        self.embeddings = torch.from_numpy(self.vectors)
        del self.masker_bytes, self.tables_bytes

    def process(self, batch: pa.Table) -> StageOutput:
        import torch

        from codecsep_core.chunked import separate_chunked
        from storage.schema import check_batch, separable_segments

        checked = check_batch(batch, self.codec)
        good = [i for i, c in enumerate(checked) if c.reason is None]
        ids, sources = batch["id"].to_pylist(), batch[SOURCE].to_pylist()
        errors = [ErrorRow(ids[i], c.reason, sources[i]) for i, c in enumerate(checked) if c.reason is not None]
        if not good:
            return StageOutput(errors=errors)
        rows = batch.take(good)
        codes = [checked[i].codes for i in good]
        meta = rows.drop_columns(["codes"]).to_pylist()
        spans = [separable_segments(row, c.shape[1]) for row, c in zip(meta, codes)]
        t0 = time.perf_counter()
        results = separate_chunked(self.separator, [torch.from_numpy(c.astype(np.int64)) for c in codes], spans, self.embeddings)
        tally = {"separate_s": time.perf_counter() - t0,
                 "audio_s": float(np.sum(rows["n_samples"].to_numpy() / rows["sample_rate"].to_numpy()))}
        return StageOutput(rows=self._output_rows(rows, results), errors=errors, tally=tally)

    def _output_rows(self, rows: pa.Table, results) -> pa.Table:
        """One row per (clip, prompt), prompt-major: input columns with new codes + scores."""
        from storage.schema import SCORE_COLUMNS, codes_to_arrow

        n, tables = rows.num_rows, []
        codes_index = rows.schema.get_field_index("codes")
        for p, prompt in enumerate(self.prompts):
            t = rows.set_column(codes_index, "codes", codes_to_arrow([r.codes[p].numpy().astype(np.uint16) for r in results]))
            t = t.append_column(SCORE_COLUMNS.field("prompt"), pa.array([prompt] * n, pa.string()))
            for name in ("energy_kept", "mask_mean"):
                t = t.append_column(SCORE_COLUMNS.field(name), pa.array([float(r.scores[name][p]) for r in results], pa.float32()))
            tables.append(t)
        return pa.concat_tables(tables)


def run(cfg: SeparateConfig) -> JobReport:
    from codecsep_core import masker_config, masker_prompt_encoder

    cfg.check()
    report = JobReport("separate")
    with report.stage("prompt_embeddings"):
        masker = sfs.read_bytes(cfg.masker)
        vectors, encoder = resolve.prompt_vectors(
            cfg.prompts, cfg.prompt_table, cfg.clap_checkpoint, masker_config(masker).cond_dim, masker_prompt_encoder(masker)
        )
    with report.stage("load_models"):
        tables = resolve.codec_tables(cfg.codec_tables, cfg.codec_weights)
    report.extra.update(prompts=list(cfg.prompts), prompt_encoder=encoder)
    stage = SeparateStage(masker, tables, cfg.prompts, vectors, cfg.separator)
    return run_stage(stage, Shards(cfg.input), cfg.output, cfg.ray, cfg.run, report)


def parse_args(argv: list[str] | None) -> SeparateConfig:
    p = job_config.job_parser("separate", SeparateConfig, __doc__.splitlines()[0])
    p.add_argument("--input", help="URI of the code shards")
    p.add_argument("--output", help="URI of the separated shards")
    p.add_argument("--prompt", dest="prompts", action="append", default=[], help="repeatable")
    p.add_argument("--masker", help="masker checkpoint URI (.safetensors)")
    p.add_argument("--codec-tables", help="codec tables URI (.safetensors)")
    p.add_argument("--codec-weights", help="DAC checkpoint URI; tables exported on the fly")
    p.add_argument("--prompt-table", help="Parquet prompt table URI")
    add_ray_arguments(p, batch_help="clips per actor call")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. separator.precision=bf16")
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    return job_config.load_config(
        SeparateConfig, a.config, a.overrides,
        input=a.input, output=a.output, prompts=a.prompts, masker=a.masker, codec_tables=a.codec_tables,
        codec_weights=a.codec_weights, prompt_table=a.prompt_table, **ray_values(a),
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli("separate", lambda: run(parse_args(argv)).emit(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
