"""`codecsep prompts`: texts -> prompt table (CLAP, 512-d), computed once and reused by
`separate --prompt-table` so that later runs need no text encoder at all."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from jobs import config as job_config
from jobs.runtime import JobReport, run_cli, setup_logging

log = logging.getLogger("codecsep.prompts")


@dataclass(frozen=True)
class PromptsConfig:
    output: str | None = None  # URI of the prompt table (.parquet)
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None  # one prompt per line, added to `prompts`
    clap_checkpoint: str | None = None  # null: the default AudioSep checkpoint, downloaded by laion-clap
    device: str = "cpu"


def collect_prompts(cfg: PromptsConfig) -> list[str]:
    from storage import fs as sfs

    texts = list(cfg.prompts)
    if cfg.prompts_file:
        texts += [line.strip() for line in sfs.read_bytes(cfg.prompts_file).decode().splitlines() if line.strip()]
    unique = list(dict.fromkeys(texts))
    if not unique:
        raise ValueError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return unique


def run(cfg: PromptsConfig) -> JobReport:
    from codecsep_core.prompt_encoder import PromptEncoder
    from storage.prompt_table import PromptTable, write_prompt_table

    if not cfg.output:
        raise ValueError("missing --output (URI of the prompt table)")
    t0 = time.perf_counter()
    texts = collect_prompts(cfg)
    report = JobReport("prompts", rows_in=len(texts))
    with report.stage("load_clap"):
        encoder = PromptEncoder(cfg.clap_checkpoint, device=cfg.device)
    with report.stage("embed"):
        vectors = encoder.encode(texts).numpy()
    write_prompt_table(cfg.output, PromptTable(tuple(texts), vectors, encoder.name))
    report.rows_out = len(texts)
    report.wall_s = time.perf_counter() - t0
    report.extra = {"output": cfg.output, "encoder": encoder.name}
    return report


def main(argv: list[str] | None = None) -> int:
    p = job_config.job_parser("prompts", PromptsConfig, __doc__.splitlines()[0])
    p.add_argument("--output", help="URI of the prompt table to write")
    p.add_argument("--prompt", dest="prompts", action="append", default=[], help="repeatable")
    p.add_argument("--prompts-file", help="text file, one prompt per line")
    p.add_argument("--clap-checkpoint", help="CLAP checkpoint path")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    a = p.parse_args(argv)
    setup_logging(a.verbose)

    def body():
        cfg = job_config.load_config(PromptsConfig, a.config, a.overrides, output=a.output, prompts=a.prompts,
                                     prompts_file=a.prompts_file, clap_checkpoint=a.clap_checkpoint)
        run(cfg).emit()

    return run_cli("prompts", body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
