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

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SeparatorConfig:
    window_frames: int = 500  # 10 s at 50 frames/s, as evaluated in the paper
    overlap_frames: int = 50
    batch_windows: int = 8  # masker rows of window_frames per call (each run once per prompt)
    precision: str = "fp32"  # masker compute dtype: fp32 | bf16 | fp16

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.window_frames < 1 or self.batch_windows < 1:
            raise ValueError("window_frames and batch_windows must be positive")
        if not 0 <= self.overlap_frames < self.window_frames:
            raise ValueError("overlap_frames must be in [0, window_frames)")


@dataclass
class ClipResult:
    """Separated codes [P, n_codebooks, T] and per-prompt curation scores, each [P]."""

    codes: torch.Tensor
    scores: dict[str, torch.Tensor] = field(default_factory=dict)


class _ClipStream:
    """Accumulates one clip's windows in order and emits finalised frames."""

    def __init__(self, codes: torch.Tensor, n_prompts: int, overlap: int, latent_dim: int):
        self.codes = codes
        self.overlap = overlap
        self.latent_dim = latent_dim
        n_q, t = codes.shape
        self.out = torch.empty(n_prompts, n_q, t, dtype=torch.int32)
        self.carry: torch.Tensor | None = None  # weighted mask of the pending overlap
        self.energy_kept = torch.zeros(n_prompts, dtype=torch.float64)
        self.energy_in = torch.zeros((), dtype=torch.float64)
        self.mask_sum = torch.zeros(n_prompts, dtype=torch.float64)

    def add(self, w: Window, z: torch.Tensor, mask: torch.Tensor):
        """z [D, L], mask [P, D, L] for window w -> (start, Z_hat [P, D, n]) of final frames."""
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
        # fp32 sums of one window (pairwise summation), accumulated across windows in fp64.
        self.energy_in += torch.linalg.vector_norm(zf).double() ** 2
        self.energy_kept += torch.linalg.vector_norm(z_hat, dim=(1, 2)).double() ** 2
        self.mask_sum += m.sum((1, 2)).double()
        return w.start, z_hat

    def result(self) -> ClipResult:
        n_values = self.latent_dim * self.codes.shape[1]
        return ClipResult(
            codes=self.out,
            scores={
                "energy_kept": (self.energy_kept / self.energy_in.clamp_min(1e-12)).float(),
                "mask_mean": (self.mask_sum / n_values).float(),
            },
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

    @torch.inference_mode()
    def separate(self, codes: list[torch.Tensor], embeddings: torch.Tensor) -> list[ClipResult]:
        """codes: one integer tensor [n_codebooks, T_i] per clip; embeddings [P, cond_dim]."""
        embeddings = self._check_embeddings(embeddings)
        for i, c in enumerate(codes):
            try:
                self.tables.check_codes(c)
            except ValueError as e:
                raise ValueError(f"clip {i}: {e}") from None
        cfg = self.config
        n_prompts = embeddings.shape[0]
        d = self.tables.info.latent_dim
        streams = [_ClipStream(c.to(self.device), n_prompts, cfg.overlap_frames, d) for c in codes]
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
