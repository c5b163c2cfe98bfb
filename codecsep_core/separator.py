"""Codes in, codes out: lookup -> masker -> M * Z -> re-quantize, over windows of any clip.

Windows of many clips are packed into masker batches: short windows (short clips, last
windows) share masker rows, with attention kept within each window and positions restarted
per window, so a window's result does not depend on its batch or row mates. Each clip is streamed window by window: the
frames a window finalises are re-quantized at once, so memory is bounded by the window
and batch sizes, never by the clip length (re-quantization is frame-wise, which makes
this exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from codecsep_core.codec_tables import CodecTables
from codecsep_core.masker import Masker
from codecsep_core.windows import Slot, Window, crossfade_weights, pack_windows, plan_windows

# Masker compute dtype per precision. int8: the masker's linear layers dynamically
# quantized (int8 weights and activations, fp32 elsewhere; CPU only, VNNI where the CPU has it).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


@dataclass(frozen=True)
class SeparatorConfig:
    window_frames: int = 500  # 10 s at 50 frames/s, as evaluated in the paper
    overlap_frames: int = 50
    batch_windows: int = 8  # masker rows of window_frames per call (each run once per prompt)
    precision: str = "fp32"  # masker compute: fp32 | bf16 | fp16 | int8 (CPU)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.window_frames < 1 or self.batch_windows < 1:
            raise ValueError("window_frames and batch_windows must be positive")
        if not 0 <= self.overlap_frames < self.window_frames:
            raise ValueError("overlap_frames must be in [0, window_frames)")


@dataclass
class ClipResult:
    """One clip's separation, P prompts: codes [P, n_codebooks, T] and curation scores (each [P]);
    per frame, the latent energy |Z|^2 [T] and the energy the mask keeps |M * Z|^2 [P, T] (where
    the source sounds: `codecsep_core.activity`); with `residual=True`, the residual stem
    `(1 - M) * Z` re-quantized, [P, n_codebooks, T], and its own scores; with `latents=True`,
    the masked latent `M * Z` [P, D, T] before re-quantization (what evaluation compares)."""

    codes: torch.Tensor
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    frame_energy: torch.Tensor | None = None
    frame_kept: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    residual_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    latent: torch.Tensor | None = None


def exclude_masks(target: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Negative prompts by mask composition: M_t * prod_x clip(1 - M_x, 0, 1).

    target [P, D, L], excluded [X, D, L] -> [P, D, L]. Chosen over embedding arithmetic
    (normalise(e_t - a * e_x)) by measurement on held-out synthetic mixtures (README,
    "Negative prompts"): the masker was never trained on such vectors, so arithmetic moves
    the mask unpredictably, while composition removes exactly what the excluded prompt's
    own mask claims, at each latent value."""
    keep = (1 - excluded).clamp(0, 1).prod(dim=0, keepdim=True)
    return target * keep


class _Totals:
    """fp32 sums of one window (pairwise summation), accumulated across windows in fp64."""

    def __init__(self, n_prompts: int):
        self.energy = torch.zeros(n_prompts, dtype=torch.float64)
        self.mask_sum = torch.zeros(n_prompts, dtype=torch.float64)

    def add(self, z_hat: torch.Tensor, m: torch.Tensor) -> None:
        self.energy += torch.linalg.vector_norm(z_hat, dim=(1, 2)).double().cpu() ** 2
        self.mask_sum += m.sum((1, 2)).double().cpu()

    def scores(self, energy_in: torch.Tensor, n_values: int) -> dict[str, torch.Tensor]:
        return {
            "energy_kept": (self.energy / energy_in.clamp_min(1e-12)).float(),
            "mask_mean": (self.mask_sum / n_values).float(),
        }


class _ClipStream:
    """Accumulates one clip's windows in order and emits finalised frames.

    Masks arrive for the P target prompts followed by `n_exclude` excluded ones; the
    excluded masks are composed into the targets' (`exclude_masks`) per window, before the
    cross-fade. With `quantize` (the codec's re-quantization), the residual `(1 - M) * Z`
    of each finalised span is re-quantized here too: one masker pass serves both stems."""

    def __init__(
        self,
        codes: torch.Tensor,
        n_prompts: int,
        overlap: int,
        latent_dim: int,
        quantize=None,
        n_exclude: int = 0,
        keep_latent: bool = False,
    ):
        self.codes = codes
        self.overlap = overlap
        self.latent_dim = latent_dim
        self.n_prompts, self.n_exclude = n_prompts, n_exclude
        self.quantize = quantize
        n_q, t = codes.shape
        self.out = torch.empty(n_prompts, n_q, t, dtype=torch.int32)
        self.residual = torch.empty(n_prompts, n_q, t, dtype=torch.int32) if quantize is not None else None
        self.latent = torch.empty(n_prompts, latent_dim, t) if keep_latent else None
        self.frame_energy = torch.empty(t, dtype=torch.float32)  # per frame |Z|^2
        self.frame_kept = torch.empty(n_prompts, t, dtype=torch.float32)  # per frame |M Z|^2
        self.carry: torch.Tensor | None = None  # weighted mask of the pending overlap
        self.energy_in = torch.zeros((), dtype=torch.float64)
        self.target = _Totals(n_prompts)
        self.rest = _Totals(n_prompts)

    def add(self, w: Window, z: torch.Tensor, mask: torch.Tensor):
        """z [D, L], mask [P + n_exclude, D, L] for window w -> (start, Z_hat [P, D, n]) of final frames."""
        if self.n_exclude:
            mask = exclude_masks(mask[: self.n_prompts], mask[self.n_prompts :])
        o = self.overlap
        if o:  # cross-fade in place: only the overlaps carry weights other than 1
            if w.index > 0:
                mask[:, :, :o] *= crossfade_weights(w, o, mask.device)[:o]
            if not w.last:
                mask[:, :, -o:] *= crossfade_weights(w, o, mask.device)[-o:]
        if self.carry is not None:
            mask[:, :, :o] += self.carry
        n_final = w.length if w.last else w.length - o
        self.carry = None if w.last else mask[:, :, n_final:].clone()
        m, zf = mask[:, :, :n_final], z[:, :n_final]
        z_hat = m * zf
        if self.latent is not None:
            self.latent[:, :, w.start : w.start + n_final] = z_hat.cpu()
        self.frame_energy[w.start : w.start + n_final] = zf.pow(2).sum(0).cpu()
        self.frame_kept[:, w.start : w.start + n_final] = z_hat.pow(2).sum(1).cpu()
        self.energy_in += torch.linalg.vector_norm(zf).double().cpu() ** 2
        self.target.add(z_hat, m)
        if self.quantize is not None and self.residual is not None:
            z_rest = zf - z_hat  # (1 - M) * Z
            self.rest.add(z_rest, 1 - m)
            self.residual[:, :, w.start : w.start + n_final] = self.quantize(z_rest).to(torch.int32).cpu()
        return w.start, z_hat

    def result(self) -> ClipResult:
        n_values = self.latent_dim * self.codes.shape[1]
        return ClipResult(
            codes=self.out,
            scores=self.target.scores(self.energy_in, n_values),
            frame_energy=self.frame_energy,
            frame_kept=self.frame_kept,
            residual=self.residual,
            residual_scores=self.rest.scores(self.energy_in, n_values) if self.residual is not None else {},
            latent=self.latent,
        )


class Separator:
    """Prompt-driven separation of DAC codes with codec tables + a masker."""

    def __init__(self, tables: CodecTables, masker: Masker, config: SeparatorConfig | None = None):
        if masker.config.latent_dim != tables.info.latent_dim:
            raise ValueError(
                f"masker latent_dim {masker.config.latent_dim} != codec latent_dim {tables.info.latent_dim}"
            )
        self.config = config or SeparatorConfig()
        self.masker = masker.eval()
        self.device = next(masker.parameters()).device
        self.tables = tables.to(self.device)
        self.dtype = PRECISIONS[self.config.precision]
        if self.config.precision == "int8":
            if self.device.type != "cpu":
                raise ValueError("precision int8 (dynamically quantized linear layers) runs on CPU only")
            self.masker = torch.ao.quantization.quantize_dynamic(self.masker, {torch.nn.Linear}, dtype=torch.qint8)

    @torch.inference_mode()
    def separate(
        self,
        codes: list[torch.Tensor],
        embeddings: torch.Tensor,
        residual: bool = False,
        exclude: torch.Tensor | None = None,
        latents: bool = False,
    ) -> list[ClipResult]:
        """codes: one integer tensor [n_codebooks, T_i] per clip; embeddings [P, cond_dim].

        residual: also return each prompt's residual stem (same masker pass). exclude [X, cond_dim]:
        negative prompts, removed from every target (`exclude_masks`). latents: also return the
        masked latent before re-quantization (memory grows with the clip: for evaluation)."""
        embeddings = self._check_embeddings(embeddings)
        n_exclude = 0
        if exclude is not None and len(exclude):
            exclude = self._check_embeddings(exclude)
            n_exclude = exclude.shape[0]
        for i, c in enumerate(codes):
            try:
                self.tables.check_codes(c)
            except ValueError as e:
                raise ValueError(f"clip {i}: {e}") from None
        cfg = self.config
        n_prompts = embeddings.shape[0]
        d = self.tables.info.latent_dim
        quantize = self.tables.quantize if residual else None
        streams = [
            _ClipStream(c.to(self.device), n_prompts, cfg.overlap_frames, d, quantize, n_exclude, latents)
            for c in codes
        ]
        if exclude is not None and n_exclude:  # the masker runs on targets and excluded prompts alike
            embeddings = torch.cat([embeddings, exclude])
        windows = (
            w for i, c in enumerate(codes) for w in plan_windows(c.shape[1], cfg.window_frames, cfg.overlap_frames, i)
        )
        for batch in pack_windows(windows, cfg.window_frames, cfg.batch_windows):
            self._run_batch(batch, streams, embeddings)
        return [s.result() for s in streams]

    def _check_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        cond_dim = self.masker.config.cond_dim
        if embeddings.dim() != 2 or embeddings.shape[1] != cond_dim or embeddings.shape[0] == 0:
            raise ValueError(f"embeddings must be [P>0, {cond_dim}], got {tuple(embeddings.shape)}")
        if not torch.isfinite(embeddings).all():
            raise ValueError("embeddings contain NaN or inf")
        return embeddings.to(self.device, torch.float32)

    def _run_batch(self, slots: list[Slot], streams: list[_ClipStream], embeddings: torch.Tensor) -> None:
        n_rows, n_p = 1 + max(s.row for s in slots), embeddings.shape[0]
        length = max(s.offset + s.window.length for s in slots)
        n_q = self.tables.info.n_codebooks
        codes = torch.zeros(n_rows, n_q, length, dtype=torch.long, device=self.device)
        segments = torch.full((n_rows, length), -1, dtype=torch.long, device=self.device)
        for k, s in enumerate(slots):
            w = s.window
            codes[s.row, :, s.offset : s.offset + w.length] = streams[w.clip].codes[:, w.start : w.stop]
            segments[s.row, s.offset : s.offset + w.length] = k
        z = self.tables.lookup(codes)  # [n_rows, D, L]
        masks = self._masks(z, embeddings, segments).view(n_rows, n_p, z.shape[1], length)
        finals, spans = [], []
        for s in slots:
            w, frames = s.window, slice(s.offset, s.offset + s.window.length)
            start, z_hat = streams[w.clip].add(w, z[s.row, :, frames], masks[s.row, :, :, frames].float())
            finals.append(z_hat)
            spans.append((w.clip, start, z_hat.shape[2]))
        # Re-quantization is frame-wise: quantize every finalised span of the batch at once.
        new_codes = self.tables.quantize(torch.cat(finals, dim=2))  # [P, n_q, sum n]
        offset = 0
        for clip, start, n in spans:
            streams[clip].out[:, :, start : start + n] = new_codes[:, :, offset : offset + n].to(torch.int32).cpu()
            offset += n

    def _masks(self, z: torch.Tensor, embeddings: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Masker on every (row, prompt) pair, row-major: [n_rows * P, D, L]."""
        if self.dtype == torch.float32:
            return self.masker(z, embeddings, all_prompts=True, segments=segments)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.masker(z, embeddings, all_prompts=True, segments=segments).float()
