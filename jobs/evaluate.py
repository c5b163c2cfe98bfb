"""`codecsep evaluate DATA OUTPUT --masker M`: separation metrics per prompt on a labelled set.

DATA is a folder of prepare-train shards (mixture codes, target codes, prompt; optionally
the audio). Per row, in code space (no codec nets):

- latent SNR of M * Z_mix against Z_target, and of the two baselines: the identity mask
  (Z_mix itself; the difference is the SNR improvement) and the same masker conditioned
  on the set's other prompts ("wrong prompt");
- code agreement: per codebook, the share of frames where the separated codes (masked,
  re-quantized with the codec's RVQ, as `separate` outputs them) equal the target's.

With `codec_weights` and audio in the shards (prepare-train keep_audio=true), also the
waveform SI-SDR of the decoded separation against the reference stem, its improvement
over the mixture (SI-SDRi), and the SI-SDR of the oracle codec reconstruction (the stem's
own codes decoded): the codec's loss, told apart from the separation's.

Writes OUTPUT/evaluation.md and OUTPUT/evaluation.json (means per prompt) and prints the
Markdown table. Runs in the driver process: labelled sets are small.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from jobs import config as job_config
from jobs.runtime import JobReport, run_cli, setup_logging
from storage import fs as sfs
from storage import shards

log = logging.getLogger("codecsep.evaluate")

COLUMNS = [  # (key, header, format)
    ("n", "rows", "{:d}"),
    ("latent_snr", "latent SNR dB", "{:.2f}"),
    ("latent_snr_identity", "identity mask dB", "{:.2f}"),
    ("latent_snri", "SNRi dB", "{:.2f}"),
    ("latent_snr_wrong_prompt", "wrong prompt dB", "{:.2f}"),
    ("code_agreement", "code agreement", "{:.3f}"),
    ("code_agreement_mix", "mix code agreement", "{:.3f}"),
    ("sisdr", "SI-SDR dB", "{:.2f}"),
    ("sisdri", "SI-SDRi dB", "{:.2f}"),
    ("sisdr_oracle", "oracle codec SI-SDR dB", "{:.2f}"),
]


@dataclass(frozen=True)
class EvaluateConfig:
    input: str | None = None
    output: str | None = None
    masker: str | None = None
    codec_tables: str | None = None
    codec_weights: str | None = None  # DAC checkpoint: waveform metrics (needs audio in the shards)
    prompt_table: str | None = None  # prompts missing from it are embedded with CLAP
    clap_checkpoint: str | None = None
    window_frames: int = 500  # masker window, as in separate
    threads: int = 2

    def check(self) -> None:
        missing = [k for k in ("input", "output", "masker") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (codecsep evaluate DATA OUTPUT --masker M)")
        if not (self.codec_tables or self.codec_weights):
            raise ValueError("set codec_tables or codec_weights")


def masked_latents(masker, z, cond, window: int):
    """M * Z for latent [D, T] under prompt vectors cond [P, C], window by window: [P, D, T]."""
    import torch

    out = []
    for a in range(0, z.shape[1], window):
        zw = z[:, a : a + window]
        out.append(masker(zw.expand(cond.shape[0], -1, -1), cond) * zw)
    return torch.cat(out, dim=2)


def row_metrics(row: dict, ctx: dict) -> dict:
    """Every metric of one labelled row (see the module docstring)."""
    import torch

    from codecsep_core.training import latent_snr, sisdr
    from storage.schema import codes_to_numpy

    tables, masker, prompts = ctx["tables"], ctx["masker"], ctx["prompts"]
    mix = torch.from_numpy(codes_to_numpy(row["mix_codes"]).astype(np.int64))
    tgt = torch.from_numpy(codes_to_numpy(row["target_codes"]).astype(np.int64))
    z_mix, z_t = tables.lookup(mix), tables.lookup(tgt)
    order = [row["prompt"]] + [p for p in ctx["set_prompts"] if p != row["prompt"]]
    z_hat = masked_latents(masker, z_mix, torch.from_numpy(prompts.vectors(order)), ctx["window"])
    snrs = latent_snr(z_hat, z_t[None].expand_as(z_hat)).tolist()
    out = {"latent_snr": snrs[0], "latent_snr_identity": float(latent_snr(z_mix[None], z_t[None])[0]),
           "latent_snr_wrong_prompt": float(np.mean(snrs[1:])) if len(snrs) > 1 else float("nan")}
    out["latent_snri"] = out["latent_snr"] - out["latent_snr_identity"]
    sep = ctx["separator"].separate([mix], torch.from_numpy(prompts.vectors([row["prompt"]])))[0].codes[0].long()
    per_codebook = (sep == tgt).float().mean(1)
    out.update(code_agreement=float(per_codebook.mean()), code_agreement_mix=float((mix == tgt).float().mean()),
               code_agreement_per_codebook=per_codebook.tolist())
    codec = ctx.get("codec")
    if codec is not None and row.get("target_audio") is not None:
        ref = torch.tensor(row["target_audio"], dtype=torch.float32)[None]
        n = ref.shape[1]
        est = torch.from_numpy(codec.decode(sep.numpy(), n))[None]
        oracle = torch.from_numpy(codec.decode(tgt.numpy(), n))[None]
        mixture = torch.tensor(row["mix_audio"], dtype=torch.float32)[None]
        out.update(sisdr=float(sisdr(est, ref)[0]), sisdr_oracle=float(sisdr(oracle, ref)[0]),
                   sisdr_mix=float(sisdr(mixture, ref)[0]))
        out["sisdri"] = out["sisdr"] - out["sisdr_mix"]
    return out


def summarise(per_row: list[tuple[str, dict]]) -> dict[str, dict]:
    """Means per prompt (and over all rows as "(all)")."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for prompt, m in per_row:
        groups[prompt].append(m)
        groups["(all)"].append(m)
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


def load_context(cfg: EvaluateConfig, set_prompts: list[str], with_audio: bool) -> dict:
    import torch

    from codecsep_core import CodecTables, Separator, SeparatorConfig, load_masker
    from jobs.train import build_prompt_table
    from storage.prompt_table import read_prompt_table

    torch.set_num_threads(cfg.threads)
    if cfg.codec_tables:
        tables = CodecTables.load(sfs.read_bytes(cfg.codec_tables))
    else:
        tables = CodecTables.from_dac_checkpoint(sfs.read_bytes(cfg.codec_weights))
    masker = load_masker(sfs.read_bytes(cfg.masker))
    known = read_prompt_table(cfg.prompt_table) if cfg.prompt_table else None
    prompts = build_prompt_table(set_prompts, known, cfg.clap_checkpoint, fixed_if_offline=False)
    window = cfg.window_frames
    ctx = {"tables": tables, "masker": masker, "prompts": prompts, "set_prompts": set_prompts, "window": window,
           "separator": Separator(tables, masker, SeparatorConfig(window_frames=window, overlap_frames=0))}
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
            per_row.append((row["prompt"], row_metrics(row, ctx)))
    summary = summarise(per_row)
    md = markdown(summary)
    sfs.write_bytes_atomic(sfs.join(cfg.output, "evaluation.md"), (md + "\n").encode())
    sfs.write_bytes_atomic(sfs.join(cfg.output, "evaluation.json"), json.dumps(summary, indent=1).encode())
    report.rows_in = report.rows_out = table.num_rows
    report.audio_hours = float(np.sum(np.asarray(table["n_samples"]) / np.asarray(table["sample_rate"]))) / 3600
    report.wall_s = time.perf_counter() - t0
    report.extra = {"output": cfg.output, "prompt_encoder": ctx["prompts"].encoder,
                    "summary": {p: {k: v for k, v in s.items() if k != "code_agreement_per_codebook"} for p, s in summary.items()}}
    return report, md


def parse_args(argv: list[str] | None) -> EvaluateConfig:
    p = argparse.ArgumentParser(prog="codecsep evaluate", description=__doc__.splitlines()[0])
    p.add_argument("args", nargs="*", metavar="DATA OUTPUT [key=value ...]")
    p.add_argument("--config", default=str(job_config.default_config_path("evaluate")))
    p.add_argument("--masker", help="masker checkpoint URI")
    p.add_argument("--codec-tables", help="codec tables URI")
    p.add_argument("--codec-weights", help="DAC checkpoint URI (waveform metrics)")
    p.add_argument("--prompt-table", help="prompt table URI (train writes <run>/prompts.parquet)")
    p.add_argument("-v", "--verbose", action="store_true")
    a, (data, output), overrides = job_config.parse_paths(p, argv, names=("DATA", "OUTPUT"))
    setup_logging(a.verbose)
    return job_config.load_config(EvaluateConfig, a.config, overrides, input=data, output=output, masker=a.masker,
                                  codec_tables=a.codec_tables, codec_weights=a.codec_weights, prompt_table=a.prompt_table)


def main(argv: list[str] | None = None) -> int:
    def body():
        cfg = parse_args(argv)
        cfg.check()
        report, md = run(cfg)
        print(md)
        report.emit()

    return run_cli("evaluate", body)

if __name__ == "__main__":
    raise SystemExit(main())
