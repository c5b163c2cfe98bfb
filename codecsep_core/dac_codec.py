"""The one module that imports the `dac` package (descript-audio-codec), lazily.

Only ingest (audio -> codes) and export (codes -> audio) need DAC's encoder and decoder;
separation runs on `CodecTables` alone. Everything here mirrors what DAC's own
`compress`/`decompress` do, so codes made here and codes from `python -m dac encode`
are the same kind of data (loudness-normalised to -16 LUFS, channels encoded one by one)
and a `.dac` file written from them decodes with DAC's own tools.

Long audio is processed in windows so memory stays bounded by the window, not the clip.
Unlike DAC's chunked `compress` (which changes the code layout: padding off, windows that
do not share a frame grid), the windows here overlap by the encoder's/decoder's receptive
field and only their centre frames/samples are kept, so the result is the one continuous
sequence a single pass would give (equal up to float rounding, which can flip a nearest-
codebook choice on a near tie).
"""

from __future__ import annotations

import functools
import inspect
import io
import logging
import math
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codecsep_core.codec_tables import CodecInfo, CodecTables

log = logging.getLogger(__name__)

DAC_VERSION = "1.0.0"  # the .dac format version DAC 1.0 writes and accepts
NORMALIZE_DB = -16.0  # loudness (LUFS) DAC's `compress` normalises its input to
MODEL_TYPES = ("16khz", "24khz", "44khz")
# The official models' architectures (DAC's own numbers), for random-weight instances.
DAC_ARCHITECTURES = {
    "16khz": dict(
        encoder_dim=64,
        encoder_rates=[2, 4, 5, 8],
        decoder_dim=1536,
        decoder_rates=[8, 5, 4, 2],
        sample_rate=16000,
        n_codebooks=12,
        codebook_size=1024,
        codebook_dim=8,
    ),
    "44khz": dict(
        encoder_dim=64,
        encoder_rates=[2, 4, 8, 8],
        decoder_dim=1536,
        decoder_rates=[8, 8, 4, 2],
        sample_rate=44100,
        n_codebooks=9,
        codebook_size=1024,
        codebook_dim=8,
    ),
}

Weights = str | Path | bytes


class DacWeightsUnavailable(RuntimeError):
    """The official weights are neither cached nor downloadable."""


# ---------------------------------------------------------------- loading


def load_dac(weights: Weights | None = None, model_type: str = "16khz"):
    """A `dac.DAC` in eval mode, on CPU.

    `weights`: a checkpoint as `DAC.load` reads it (a `torch.save`d dict with
    `state_dict` and `metadata.kwargs`), as a local path or its bytes; loaded with
    `weights_only=True`, so the file cannot run code. None: DAC's own downloader
    (`dac.utils.download`, cached under ~/.cache/descript/dac/).
    """
    import dac

    if weights is None:
        weights = official_weights(model_type)
    name = "<bytes>" if isinstance(weights, (bytes, bytearray, memoryview)) else str(weights)
    data = bytes(weights) if isinstance(weights, (bytes, bytearray, memoryview)) else Path(weights).read_bytes()
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the source and what was expected
        raise ValueError(f"{name}: not a readable DAC checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{name}: not a DAC checkpoint (no 'state_dict')")
    return _build(dac.DAC, ckpt, name)


def random_dac(seed: int = 0, model_type: str = "16khz"):
    """A DAC of the real architecture (16 kHz unless told) with seeded random weights: what
    tests, benchmarks and the offline demo use where no weights can be downloaded."""
    import dac

    torch.manual_seed(seed)
    return use_one_buffer_snakes(dac.DAC(**DAC_ARCHITECTURES[model_type]).eval())


def official_weights(model_type: str) -> Path:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    from dac.utils import download

    try:
        return download(model_type=model_type)
    except Exception as e:  # noqa: BLE001 - requests errors, HTTP status errors
        raise DacWeightsUnavailable(
            f"official DAC {model_type} weights not cached and no network ({type(e).__name__}: {e}): "
            "pass --codec-weights PATH"
        ) from e


def _build(dac_cls, ckpt: dict, name: str):
    """Construct the model from the checkpoint's kwargs, as `DAC.load` does, but refuse a
    checkpoint that leaves weights unset (DAC.load's strict=False would keep them random)."""
    kwargs = dict((ckpt.get("metadata") or {}).get("kwargs") or {})
    accepted = inspect.signature(dac_cls).parameters
    model = dac_cls(**{k: v for k, v in kwargs.items() if k in accepted})
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing:
        raise ValueError(f"{name}: DAC checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    if unexpected:
        log.warning("%s: ignoring %d unexpected tensors, e.g. %s", name, len(unexpected), unexpected[:3])
    model.metadata = ckpt.get("metadata") or {}
    return use_one_buffer_snakes(model.eval())


# ---------------------------------------------------------------- audio helpers


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """[channels, n] float32 -> [channels, floor(n * to / from)], as audiotools resamples."""
    if from_rate == to_rate:
        return np.asarray(audio, dtype=np.float32)
    import julius

    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return julius.resample_frac(x, int(from_rate), int(to_rate)).numpy()


SURROUND_5_1_MEASURED = [0, 1, 2, 4, 5]  # L R C Ls Rs: BS.1770 leaves out the LFE (channel 3)


def loudness_db(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness (ITU-R BS.1770, LUFS) of all channels together, with DAC's meter
    (audiotools), so it is the `input_db` a `.dac` file records. Silence gives -70.
    audiotools weighs up to 5 channels (L R C Ls Rs); 5.1 audio is measured as BS.1770
    says, without its LFE channel. Other layouts of more than 5 channels are refused."""
    from audiotools import AudioSignal

    if audio.shape[0] == 6:
        audio = audio[SURROUND_5_1_MEASURED]
    elif audio.shape[0] > 6:
        raise ValueError(f"{audio.shape[0]} channels: loudness is measured for up to 5.1 (6 channels) only")
    signal = AudioSignal(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None], sample_rate)
    return float(signal.loudness()[0])


def apply_gain_db(audio: np.ndarray, gain_db: float) -> np.ndarray:
    return (audio * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def limit_peaks(audio: np.ndarray) -> np.ndarray:
    """Scale each channel whose peak exceeds 1 down to 1 (audiotools' ensure_max_of_audio)."""
    peak = np.abs(audio).max(axis=-1, keepdims=True)
    return (audio / np.maximum(peak, 1.0)).astype(np.float32)


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad the last axis to exactly n samples."""
    if audio.shape[-1] >= n:
        return audio[..., :n]
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, n - audio.shape[-1])]
    return np.pad(audio, pad)


# ---------------------------------------------------------------- the codec


@dataclass(frozen=True)
class Compressed:
    """What DAC's `compress` keeps of a clip: codes of the loudness-normalised audio at the
    codec rate, that audio's length, and the input loudness to restore on decode."""

    codes: np.ndarray  # uint16 [channels, n_codebooks, n_frames]
    n_samples: int  # length at the codec rate
    input_db: float


def _encoder_context_frames(encoder: torch.nn.Module, hop: int) -> int:
    """Frames of context either side that make a window's kept centre independent of the
    window's edges: half the encoder's receptive field (its convolutions summed in order,
    an upper bound for the residual branches) over the hop, plus a safety margin."""
    rf, jump = 1, 1  # receptive field and input stride, in samples
    for layer in encoder.modules():
        if isinstance(layer, torch.nn.Conv1d):
            rf += (layer.kernel_size[0] - 1) * layer.dilation[0] * jump
            jump *= layer.stride[0]
    return math.ceil(rf / 2 / hop) + 2


def _decoder_context_frames(decoder: torch.nn.Module) -> int:
    """The same for the decoder, whose receptive field is counted in input frames."""
    rf, rate = 1.0, 1  # receptive field in frames; samples per frame at the layer's input
    for layer in decoder.modules():
        if isinstance(layer, torch.nn.ConvTranspose1d):
            rf += math.ceil(layer.kernel_size[0] / layer.stride[0]) / rate
            rate *= layer.stride[0]
        elif isinstance(layer, torch.nn.Conv1d):
            rf += (layer.kernel_size[0] - 1) * layer.dilation[0] / rate
    return math.ceil(rf / 2) + 2


def _snake_in_one_buffer(self, x: torch.Tensor, dac_snake) -> torch.Tensor:
    """DAC's `snake`, x + sin(alpha x)^2 / alpha, with the same float operations in the same
    order (so the same bits), written into one buffer instead of four temporaries the size of
    the activation: a quarter off a CPU encode. Where gradients are wanted, DAC's own."""
    if torch.is_grad_enabled():
        return dac_snake(x, self.alpha)
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    out = torch.mul(self.alpha, x3).sin_().pow_(2).mul_((self.alpha + 1e-9).reciprocal())
    return out.add_(x3).reshape(x.shape)


def use_one_buffer_snakes(model: torch.nn.Module) -> torch.nn.Module:
    """Every `Snake1d` of a DAC model we build computes as `_snake_in_one_buffer`; -> model."""
    from dac.nn.layers import Snake1d, snake

    forward = functools.partial(_snake_in_one_buffer, dac_snake=snake)
    for module in model.modules():
        if isinstance(module, Snake1d):
            module.forward = types.MethodType(forward, module)
    return model


class DacCodec:
    """DAC encode/decode of numpy audio, in overlapping windows of `window_seconds`.

    Channels are encoded separately, as DAC's `compress` folds them into the batch.
    """

    def __init__(self, model, window_seconds: float = 5.0, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.info: CodecInfo = CodecTables.from_dac_model(model).info
        hop = self.info.hop_length
        self.window_frames = max(1, round(window_seconds * self.info.sample_rate / hop))
        self.encode_context = _encoder_context_frames(model.encoder, hop)
        self.decode_context = _decoder_context_frames(model.decoder)
        self.decode_shortfall = self._measure_decode_shortfall()

    @classmethod
    def load(cls, weights: Weights | None = None, model_type: str = "16khz", **kwargs) -> "DacCodec":
        return cls(load_dac(weights, model_type), **kwargs)

    def tables(self) -> CodecTables:
        return CodecTables.from_dac_model(self.model)

    @torch.inference_mode()
    def _measure_decode_shortfall(self) -> int:
        """Samples the decoder yields short of n_frames * hop (8 for the 16 kHz model)."""
        z = self.model.quantizer.from_codes(
            torch.zeros(1, self.info.n_codebooks, 2, dtype=torch.long, device=self.device)
        )[0]
        return 2 * self.info.hop_length - self.model.decode(z).shape[-1]

    # ------------------------------------------------------------ encode

    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """float32 [channels, n] at `sample_rate` -> codes uint16 [channels, n_q, T], as is
        (no loudness normalisation; `compress` does that).

        T covers the audio plus the decoder's shortfall and resampling slack, so a decode
        (ours, or DAC's `decompress` of a `.dac` made from these codes, which would fail
        on a too-short decode) always yields the full original length.
        """
        x = resample(self._check_audio(audio), sample_rate, self.info.sample_rate)
        return self._encode(x, sample_rate)

    def compress(self, audio: np.ndarray, sample_rate: int) -> Compressed:
        """What DAC's `compress` does to a clip: resample to the codec rate, measure the
        input loudness, normalise to -16 LUFS, limit peaks to 1, encode."""
        x = resample(self._check_audio(audio), sample_rate, self.info.sample_rate)
        input_db = loudness_db(x, self.info.sample_rate)
        x = limit_peaks(apply_gain_db(x, NORMALIZE_DB - input_db))
        return Compressed(codes=self._encode(x, sample_rate), n_samples=x.shape[-1], input_db=input_db)

    @staticmethod
    def _check_audio(audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2:
            raise ValueError(f"audio must be [channels, n_samples], got shape {audio.shape}")
        if audio.shape[0] == 0 or audio.shape[1] == 0:
            raise ValueError("empty audio (0 samples)")
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples")
        return audio

    def _n_frames(self, n_samples: int, source_rate: int) -> int:
        slack = self.decode_shortfall + math.ceil(self.info.sample_rate / source_rate) + 1
        return math.ceil((n_samples + slack) / self.info.hop_length)

    @torch.inference_mode()
    def _encode(self, x: np.ndarray, source_rate: int) -> np.ndarray:
        hop, ctx, win = self.info.hop_length, self.encode_context, self.window_frames
        n_frames = self._n_frames(x.shape[-1], source_rate)
        audio = torch.zeros(x.shape[0], 1, n_frames * hop, device=self.device)
        audio[:, 0, : x.shape[-1]] = torch.from_numpy(x).to(self.device)
        out = []
        for start in range(0, n_frames, win):
            stop = min(start + win, n_frames)
            a, b = max(0, start - ctx), min(n_frames, stop + ctx)
            codes = self.model.encode(audio[..., a * hop : b * hop])[1]
            out.append(codes[..., start - a : stop - a].cpu())
        return torch.cat(out, dim=-1).numpy().astype(np.uint16)

    # ------------------------------------------------------------ decode

    def _latent(self, codes: np.ndarray) -> torch.Tensor:
        c = torch.from_numpy(np.asarray(codes).astype(np.int64))[None].to(self.device)
        return self.model.quantizer.from_codes(c)[0]

    @torch.inference_mode()
    def decode(self, codes: np.ndarray, n_samples: int) -> np.ndarray:
        """codes [n_q, T] of one channel (continuous, DAC's padded mode) -> float32
        [n_samples] at the codec rate, as the loudness-normalised signal that was encoded."""
        hop, ctx, win = self.info.hop_length, self.decode_context, self.window_frames
        n_frames = codes.shape[-1]
        out = []
        for start in range(0, n_frames, win):
            stop = min(start + win, n_frames)
            a, b = max(0, start - ctx), min(n_frames, stop + ctx)
            y = self.model.decode(self._latent(codes[:, a:b]))[0, 0]
            keep_to = None if stop == n_frames else (stop - a) * hop
            out.append(y[(start - a) * hop : keep_to].cpu())
        return fit_length(torch.cat(out).numpy(), n_samples)

    @torch.inference_mode()
    def decode_chunks(self, codes: np.ndarray, chunk_length: int, n_samples: int) -> np.ndarray:
        """codes [n_q, T] of a chunked `.dac` (written with padding off) -> float32
        [n_samples], chunk by chunk with padding off, exactly as DAC's `decompress`."""
        model = self.model
        original = model.padding
        model.padding = False
        try:
            parts = [
                model.decode(self._latent(codes[:, i : i + chunk_length]))[0, 0].cpu()
                for i in range(0, codes.shape[-1], chunk_length)
            ]
        finally:
            model.padding = original
        return fit_length(torch.cat(parts).numpy(), n_samples)
