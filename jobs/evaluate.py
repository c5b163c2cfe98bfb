"""`codecsep evaluate DATA OUTPUT --masker M`: separation metrics per prompt on a labelled set.

DATA is a folder of prepare-train shards (mixture codes, target codes, prompt; optionally
the audio). Every figure is of what `separate` writes: the mixture goes through the same
`Separator` (windows, cross-fade, re-quantization with the codec's RVQ), and the metrics
are computed on the separated codes. Per row, in code space (no codec nets):

- latent SNR of the separated codes' latent against Z_target, and of the two baselines:
  the identity (Z_mix itself; the difference is the SNR improvement) and the same masker
  conditioned on the set's other prompts ("wrong prompt");
- the same two SNRs for the masked latent M * Z before re-quantization ("masked"): what
  the masker itself achieves, apart from what the codec's quantizer then loses;
- code agreement: per codebook, the share of frames where the separated codes equal the
  target's.

With `codec_weights` and audio in the shards (prepare-train keep_audio=true), also the
waveform SI-SDR of the decoded separation against the reference stem, its improvement
over the mixture (SI-SDRi), and the SI-SDR of the oracle codec reconstruction (the stem's
own codes decoded): the codec's loss, told apart from the separation's.

Per prompt, also the paired gains over the identity mask and over the wrong prompt: the
mean per-clip gain, its 95% confidence interval and a Wilcoxon signed-rank p (jobs.gains).
`--against DIR` adds the gain over another evaluation of the same set (another masker),
paired by clip the same way.

Writes OUTPUT/evaluation.md, OUTPUT/evaluation.json (means and gains per prompt) and
OUTPUT/evaluation_rows.parquet (one row of figures per labelled row: what the gains are
computed from) and prints the Markdown tables. Runs in the driver process: labelled sets
are small.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from codecsep_core import SeparatorConfig
from jobs import gains, resolve
from jobs.engine import JobParser, JobReport, require
from storage import fs as sfs
from storage import shards

log = logging.getLogger("codecsep.evaluate")

COLUMNS = [  # (key, header, format)
    ("n", "rows", "{:d}"),
    ("latent_snr", "latent SNR dB", "{:.2f}"),
    ("latent_snr_identity", "identity mask dB", "{:.2f}"),
    ("latent_snri", "SNRi dB", "{:.2f}"),
    ("latent_snr_wrong_prompt", "wrong prompt dB", "{:.2f}"),
    ("masked_latent_snr", "masked latent SNR dB", "{:.2f}"),
    ("masked_latent_snr_wrong_prompt", "masked wrong prompt dB", "{:.2f}"),
    ("code_agreement", "code agreement", "{:.3f}"),
    ("code_agreement_mix", "mix code agreement", "{:.3f}"),
    ("sisdr", "SI-SDR dB", "{:.2f}"),
    ("sisdri", "SI-SDRi dB", "{:.2f}"),
    ("sisdr_oracle", "oracle codec SI-SDR dB", "{:.2f}"),
]


@dataclass(frozen=True)
class EvaluateConfig:
    input: str | None = None  # URI of labelled shards (e.g. <prepare-train output>/val)
    output: str | None = None  # URI of the folder for evaluation.md / evaluation.json
    masker: str | None = None  # masker checkpoint (train writes <run>/masker.safetensors)
    codec_tables: str | None = None  # codec tables (train writes <run>/codec_tables.safetensors); or codec_weights
    codec_weights: str | None = None  # DAC checkpoint: enables waveform SI-SDR / SI-SDRi / oracle (needs audio)
    prompt_table: str | None = None  # train writes <run>/prompts.parquet; missing prompts are embedded with CLAP
    against: str | None = None  # another evaluation's OUTPUT on the same set: adds the paired gain over it
    clap_checkpoint: str | None = None
    separator: SeparatorConfig = field(default_factory=SeparatorConfig)  # as `separate` runs it
    threads: int = 2  # torch threads

    def check(self) -> None:
        require(self, ("input", "output", "masker"), "codecsep evaluate DATA OUTPUT --masker M")
        if not (self.codec_tables or self.codec_weights):
            raise ValueError("set codec_tables or codec_weights")


def row_metrics(row: dict, ctx: dict) -> dict:
    """Every metric of one labelled row (see the module docstring)."""
    import torch

    from codecsep_core.training import latent_snr, sisdr
    from storage.schema import codes_to_numpy

    tables, vectors = ctx["tables"], ctx["vectors"]
    mix = torch.from_numpy(codes_to_numpy(row["mix_codes"]).astype(np.int64))
    tgt = torch.from_numpy(codes_to_numpy(row["target_codes"]).astype(np.int64))
    order = [row["prompt"]] + [p for p in ctx["set_prompts"] if p != row["prompt"]]
    result = ctx["separator"].separate([mix], torch.from_numpy(np.stack([vectors[p] for p in order])), latents=True)[0]
    separated = result.codes.long()
    z_t = tables.lookup(tgt)
    out = {"latent_snr_identity": float(latent_snr(tables.lookup(mix)[None], z_t[None])[0])}
    for prefix, z_hat in (("", tables.lookup(separated)), ("masked_", result.latent)):
        snrs = latent_snr(z_hat, z_t[None].expand_as(z_hat)).tolist()
        out[prefix + "latent_snr"] = snrs[0]
        out[prefix + "latent_snr_wrong_prompt"] = float(np.mean(snrs[1:])) if len(snrs) > 1 else float("nan")
    out["latent_snri"] = out["latent_snr"] - out["latent_snr_identity"]
    sep = separated[0]
    per_codebook = (sep == tgt).float().mean(1)
    out.update(
        code_agreement=float(per_codebook.mean()),
        code_agreement_mix=float((mix == tgt).float().mean()),
        code_agreement_per_codebook=per_codebook.tolist(),
    )
    codec = ctx.get("codec")
    if codec is not None and row.get("target_audio") is not None:
        ref = torch.tensor(row["target_audio"], dtype=torch.float32)[None]
        n = ref.shape[1]
        est = torch.from_numpy(codec.decode(sep.numpy(), n))[None]
        oracle = torch.from_numpy(codec.decode(tgt.numpy(), n))[None]
        mixture = torch.tensor(row["mix_audio"], dtype=torch.float32)[None]
        out.update(
            sisdr=float(sisdr(est, ref)[0]),
            sisdr_oracle=float(sisdr(oracle, ref)[0]),
            sisdr_mix=float(sisdr(mixture, ref)[0]),
        )
        out["sisdri"] = out["sisdr"] - out["sisdr_mix"]
    return out


def summarise(per_row: list[dict]) -> dict[str, dict]:
    """Means per prompt (and over all rows as "(all)") of every metric of the rows."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in per_row:
        metrics = {k: v for k, v in row.items() if k not in ("id", "prompt")}
        groups[row["prompt"]].append(metrics)
        groups["(all)"].append(metrics)
    out = {}
    for prompt in sorted(groups, key=lambda p: (p == "(all)", p)):
        rows = groups[prompt]
        summary = {"n": len(rows)}
        for key in rows[0]:
            values = [r[key] for r in rows if key in r]
            summary[key] = np.mean(values, axis=0).tolist() if values else None
        out[prompt] = summary
    return out


def markdown(summary: dict[str, dict]) -> str:
    cols = [c for c in COLUMNS if any(s.get(c[0]) is not None for s in summary.values())]
    lines = ["| prompt | " + " | ".join(h for _, h, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for prompt, s in summary.items():
        cells = [fmt.format(s[k]) if s.get(k) is not None else "" for k, _, fmt in cols]
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ROWS_FILE = "evaluation_rows.parquet"


def rows_table(per_row: list[dict]) -> pa.Table:
    """The per-clip figures (id, prompt and every scalar metric)."""
    keys = [k for k in per_row[0] if not isinstance(per_row[0][k], list)]
    return pa.table({k: [r.get(k) for r in per_row] for k in keys})


def load_context(cfg: EvaluateConfig, set_prompts: list[str], with_audio: bool) -> dict:
    import torch

    from codecsep_core import CodecTables, Separator, load_masker, masker_prompt_encoder

    torch.set_num_threads(cfg.threads)
    tables = CodecTables.load(resolve.codec_tables(cfg.codec_tables, cfg.codec_weights))
    masker_bytes = sfs.read_bytes(cfg.masker)
    masker = load_masker(masker_bytes)
    vectors, encoder = resolve.prompt_vectors(
        set_prompts, cfg.prompt_table, cfg.clap_checkpoint, masker.config.cond_dim, masker_prompt_encoder(masker_bytes)
    )
    ctx = {
        "tables": tables,
        "vectors": dict(zip(set_prompts, vectors)),
        "encoder": encoder,
        "set_prompts": set_prompts,
        "separator": Separator(tables, masker, cfg.separator),
    }
    if cfg.codec_weights and with_audio:
        from codecsep_core.dac_codec import DacCodec

        ctx["codec"] = DacCodec.load(sfs.read_bytes(cfg.codec_weights))
    elif cfg.codec_weights:
        log.info("no audio in %s (prepare-train keep_audio=true): waveform metrics skipped", cfg.input)
    return ctx


def run(cfg: EvaluateConfig) -> tuple[JobReport, str]:
    import torch

    cfg.check()
    report = JobReport("evaluate")
    t0 = time.perf_counter()
    table = shards.read_table(cfg.input)
    if not table.num_rows:
        raise ValueError(f"no labelled rows in {cfg.input}")
    set_prompts = sorted(set(table["prompt"].to_pylist()))
    ctx = load_context(cfg, set_prompts, "target_audio" in table.column_names)
    per_row = []
    with report.stage("metrics"), torch.inference_mode():
        for row in table.to_pylist():
            per_row.append({"id": row["id"], "prompt": row["prompt"], **row_metrics(row, ctx)})
    summary = summarise(per_row)
    result = {"summary": summary, "gains": gains.gains(per_row)}
    tables = [markdown(summary), gains.markdown(result["gains"])]
    if cfg.against:
        result["against"] = gains.against(per_row, shards.read_table(sfs.join(cfg.against, ROWS_FILE)).to_pylist())
        tables.append(f"Against {cfg.against}:\n\n{gains.markdown(result['against'])}")
    md = "\n\n".join(tables)
    shards.write_table_atomic(sfs.join(cfg.output, ROWS_FILE), rows_table(per_row))
    sfs.write_bytes_atomic(sfs.join(cfg.output, "evaluation.md"), (md + "\n").encode())
    sfs.write_bytes_atomic(sfs.join(cfg.output, "evaluation.json"), json.dumps(result, indent=1).encode())
    report.rows_in = report.rows_out = table.num_rows
    report.audio_hours = float(np.sum(np.asarray(table["n_samples"]) / np.asarray(table["sample_rate"]))) / 3600
    report.wall_s = time.perf_counter() - t0
    report.extra = {
        "output": cfg.output,
        "prompt_encoder": ctx["encoder"],
        "summary": {p: {k: v for k, v in s.items() if k != "code_agreement_per_codebook"} for p, s in summary.items()},
    }
    return report, md


def parse_args(argv: list[str] | None) -> EvaluateConfig:
    p = JobParser(
        "evaluate",
        EvaluateConfig,
        __doc__.splitlines()[0],
        (("DATA", "input"), ("OUTPUT", "output")),
        "prepare-train output URI, report folder URI",
    )
    p.add_argument("--masker", help="masker checkpoint URI")
    p.add_argument("--codec-tables", help="codec tables URI")
    p.add_argument("--codec-weights", help="DAC checkpoint URI (waveform metrics)")
    p.add_argument("--prompt-table", help="prompt table URI (train writes <run>/prompts.parquet)")
    p.add_argument("--against", help="another evaluation's OUTPUT on the same set: the paired gain over it")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep evaluate`: parse, run, print the table and the report (exit codes: jobs.cli)."""
    cfg = parse_args(argv)
    cfg.check()
    report, md = run(cfg)
    print(md)
    report.emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["evaluate", *sys.argv[1:]], program=True))
