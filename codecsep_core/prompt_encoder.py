"""CLAP embeddings for separation prompts (laion-clap HTSAT-base + RoBERTa, 512-d): texts through
the text branch, example clips (query by example) through the audio branch (HTSAT), into one space.

laion-clap loads Hugging Face hub files behind the caller's back: `import laion_clap` builds
BERT, RoBERTa and BART tokenizers (laion_clap/training/data.py) and `CLAP_Module` loads
`RobertaModel.from_pretrained("roberta-base")` and a RoBERTa tokenizer (clap_module/model.py,
hook.py). Without those files cached and without network, huggingface_hub retries each file
for ~25 s and laion-clap then dies with an unrelated TypeError; offline, a bad vocabulary gives
a tokenizer that maps every word to <unk>, i.e. the same vector for every prompt. So this
module checks the cache before importing laion-clap, imports and builds it with the hub forced
offline, and verifies the tokenizer and the embeddings before handing the encoder out; every
failure is a `PromptEncoderUnavailable` that says what is missing and how to provide it.

laion_clap is imported here only, lazily: never at codecsep_core import time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pickle
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

EMBED_DIM = 512
AMODEL, TMODEL = "HTSAT-base", "roberta"
ENCODER_NAME = f"laion-clap:{AMODEL}+{TMODEL}"
# The checkpoint AudioSep conditions on; hosted where laion-clap's load_ckpt downloads from.
DEFAULT_CHECKPOINT = "music_speech_audioset_epoch_15_esc_89.98.pt"
CHECKPOINT_REPO = "lukewys/laion_clap"

# Hub files laion-clap loads by name (repo -> groups of alternatives; one of each group is needed):
# the three tokenizers at import, RoBERTa's config and weights in CLAP_Module.
HUB_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "roberta-base": (("config.json",), ("vocab.json",), ("merges.txt",), ("model.safetensors", "pytorch_model.bin")),
    "bert-base-uncased": (("vocab.txt",),),
    "facebook/bart-base": (("vocab.json",), ("merges.txt",)),
}
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Saved by transformers < 4.31 as a buffer, no longer one: laion-clap's own loader drops it too.
_STALE_KEYS = ("text_branch.embeddings.position_ids",)
_PROBE_TEXTS = ("a dog barking", "speech and background music")
CLAP_SAMPLE_RATE = 48000  # HTSAT's input rate
CLAP_MAX_SAMPLES = 480000  # 10 s: what the non-fusion model takes in one piece


class PromptEncoderUnavailable(RuntimeError):
    """The CLAP text encoder cannot be built here; the message says what is missing and how to fix it."""


class PromptEncoder:
    """Prompt texts -> L2-normalised 512-d CLAP text embeddings.

    `checkpoint` is a local CLAP checkpoint (the format laion-clap's `load_ckpt` reads). None means
    the default checkpoint, looked up where laion-clap's `load_ckpt` stores downloads and in the
    Hugging Face cache, and downloaded from the laion-clap hub repo when neither has it. The
    checkpoint is read with `torch.load(weights_only=True)`; `trust_checkpoint=True` allows full
    unpickling, for a file you trust that holds more than tensors and plain containers.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        trust_checkpoint: bool = False,
    ) -> None:
        ckpt_path = _resolve_checkpoint(checkpoint)
        _ensure_hub_files()
        self.name = f"{ENCODER_NAME}:{ckpt_path.name}"
        self.dim = EMBED_DIM
        self.batch_size = batch_size
        # The checkpoint is read (and a bad one refused) before the slow model build.
        self._clap = _build_clap(_read_checkpoint(ckpt_path, trusted=trust_checkpoint), ckpt_path, torch.device(device))
        _check_tokenizer(self._clap.tokenize)
        _check_embeddings(self.encode(list(_PROBE_TEXTS)))
        log.info("prompt encoder ready: %s on %s", self.name, device)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """-> float32 [len(texts), 512] on the CPU, rows L2-normalised, one row per text."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode takes a list of strings")
        chunks = [self._embed(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        out = torch.cat(chunks) if chunks else torch.empty(0, EMBED_DIM)
        if not torch.isfinite(out).all():
            raise PromptEncoderUnavailable(f"{self.name} produced non-finite embeddings")
        return out

    def encode_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
        """Mono example clips (float32 [n] each, at `sample_rate`) -> float32 [len(waveforms), 512]
        on the CPU, rows L2-normalised, through CLAP's audio branch.

        Clips are resampled to 48 kHz. The non-fusion model takes 10 s at a time and laion-clap
        would crop a longer clip at random, so a longer clip is cut into 10 s pieces (the last
        one repeat-padded by laion-clap, as a short clip is) and their embeddings are averaged,
        weighted by length: the same clip always gives the same vector."""
        from codecsep_core.dac_codec import resample

        out = []
        for i, wave in enumerate(waveforms):
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim != 1 or wave.size == 0 or not np.isfinite(wave).all():
                raise ValueError(f"example clip {i}: expected a non-empty finite mono waveform, got shape {wave.shape}")
            wave = resample(wave[None], sample_rate, CLAP_SAMPLE_RATE)[0]
            pieces = [wave[j : j + CLAP_MAX_SAMPLES] for j in range(0, len(wave), CLAP_MAX_SAMPLES)]
            with torch.inference_mode():
                emb = torch.as_tensor(self._clap.get_audio_embedding_from_data(pieces, use_tensor=False)).float()
            weights = torch.tensor([len(p) for p in pieces], dtype=torch.float32)[:, None]
            out.append(torch.nn.functional.normalize((emb * weights).sum(0), dim=0))
        result = torch.stack(out) if out else torch.empty(0, EMBED_DIM)
        if not torch.isfinite(result).all():
            raise PromptEncoderUnavailable(f"{self.name} produced non-finite audio embeddings")
        return result

    def _embed(self, texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return self._clap.get_text_embedding(texts, use_tensor=True).float().cpu()


def _resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise PromptEncoderUnavailable(f"CLAP checkpoint not found: {path}")
        return path
    found = _find_default_checkpoint()
    if found is not None:
        return found
    _require_hub(
        f"the default CLAP checkpoint {DEFAULT_CHECKPOINT} (hub repo {CHECKPOINT_REPO!r})",
        fix=f"Pass checkpoint=<path to a CLAP .pt file>, or put it in that cache (`hf download {CHECKPOINT_REPO} "
        f"{DEFAULT_CHECKPOINT}` on a machine with network, then copy the cache here) or in laion_clap's package dir",
    )
    return _download(CHECKPOINT_REPO, DEFAULT_CHECKPOINT)


def _find_default_checkpoint() -> Path | None:
    """Where laion-clap's load_ckpt saves downloads (its package dir), then the HF cache."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is not None and spec.origin is not None:
        in_package = Path(spec.origin).parent / DEFAULT_CHECKPOINT
        if in_package.is_file():
            return in_package
    cached = _cached(CHECKPOINT_REPO, DEFAULT_CHECKPOINT)
    return Path(cached) if cached else None


def _cached(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) else None


def _missing_hub_files() -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for repo, groups in HUB_FILES.items():
        for alternatives in groups:
            if not any(_cached(repo, f) for f in alternatives):
                missing.setdefault(repo, []).append(alternatives[0])
    return missing


def _ensure_hub_files() -> None:
    """Fail fast, before laion-clap is imported, unless every hub file it loads is cached."""
    missing = _missing_hub_files()
    if not missing:
        return
    listing = "; ".join(f"{repo}: {', '.join(files)}" for repo, files in missing.items())
    commands = " and ".join(f"`hf download {repo} {' '.join(files)}`" for repo, files in missing.items())
    _require_hub(
        f"hub files that laion-clap loads ({listing})",
        fix=f"Fetch them on a machine with network ({commands}) and copy that cache here, "
        "or point HF_HOME / HF_HUB_CACHE at a cache that has them",
    )
    for repo, files in missing.items():
        for filename in files:
            _download(repo, filename)


def _require_hub(what: str, fix: str) -> None:
    """Raise unless the hub can be reached. One quick probe: huggingface_hub alone retries a dead
    hub for ~25 s per file before failing."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        reason = "offline mode is set"
    elif not _hub_reachable(constants.ENDPOINT):
        reason = f"{constants.ENDPOINT} is unreachable"
    else:
        return
    raise PromptEncoderUnavailable(
        f"Missing {what}: not in the Hugging Face cache {constants.HF_HUB_CACHE}, and not downloadable "
        f"({reason}). {fix}."
    )


def _hub_reachable(endpoint: str, timeout: float = 5.0) -> bool:
    import requests

    try:
        requests.head(endpoint, timeout=timeout)
    except requests.RequestException:
        return False
    return True


def _download(repo: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    log.info("downloading %s from the hub repo %s", filename, repo)
    return Path(hf_hub_download(repo, filename))


def _read_checkpoint(path: Path, trusted: bool) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint in the format laion-clap's load_ckpt reads."""
    if not zipfile.is_zipfile(path):
        raise PromptEncoderUnavailable(f"{path}: not a torch checkpoint (torch.save's zip format)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        raise PromptEncoderUnavailable(
            f"{path}: the checkpoint holds objects other than tensors and plain containers, so it "
            "was not unpickled; pass trust_checkpoint=True if you trust this file"
        ) from e
    except Exception as e:  # noqa: BLE001 - any read failure means "not a torch checkpoint"
        raise PromptEncoderUnavailable(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PromptEncoderUnavailable(f"{path}: no CLAP state dict in this checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for key in _STALE_KEYS:
        state.pop(key, None)
    return state


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hub lookups inside read the cache only. huggingface_hub and transformers read the offline
    flag once, at their import, so the loaded modules are switched too, and restored after."""
    import huggingface_hub.constants as hub_constants
    import transformers.utils.hub as transformers_hub

    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    saved_flags = hub_constants.HF_HUB_OFFLINE, transformers_hub._is_offline_mode
    os.environ.update(dict.fromkeys(_OFFLINE_ENV, "1"))
    hub_constants.HF_HUB_OFFLINE = transformers_hub._is_offline_mode = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, transformers_hub._is_offline_mode = saved_flags
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _build_clap(state: dict[str, torch.Tensor], ckpt_path: Path, device: torch.device):
    with _hub_offline():
        try:
            import laion_clap

            clap = laion_clap.CLAP_Module(enable_fusion=False, amodel=AMODEL, tmodel=TMODEL, device=device)
        except OSError as e:
            raise PromptEncoderUnavailable(f"laion-clap could not load its hub files offline: {e}") from e
    try:
        clap.model.load_state_dict(state)
    except RuntimeError as e:
        raise PromptEncoderUnavailable(f"{ckpt_path}: not a non-fusion {AMODEL}+{TMODEL} CLAP checkpoint ({e})") from e
    return clap.eval()


def _check_tokenizer(tokenizer) -> None:
    """A vocabulary that lost its words maps every prompt to <unk>: one vector for all prompts."""
    try:
        ids = tokenizer(_PROBE_TEXTS[0])["input_ids"]
    except Exception as e:  # noqa: BLE001 - a tokenizer that cannot tokenize is broken, whatever the error
        raise PromptEncoderUnavailable(f"the roberta-base tokenizer is broken ({type(e).__name__}: {e})") from e
    special = set(tokenizer.all_special_ids)
    words = [i for i in ids if i not in special]
    if not words or any(not isinstance(i, int) for i in words):
        raise PromptEncoderUnavailable(
            f"the roberta-base tokenizer maps {_PROBE_TEXTS[0]!r} to no known token (ids {ids}): its "
            "vocab.json / merges.txt in the Hugging Face cache are empty or wrong; re-download them"
        )


def _check_embeddings(emb: torch.Tensor) -> None:
    norms = emb.norm(dim=1)
    if emb.shape[1] != EMBED_DIM or not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise PromptEncoderUnavailable(f"CLAP text embeddings are not unit {EMBED_DIM}-d vectors (norms {norms})")
    if torch.allclose(emb[0], emb[1], atol=1e-6):
        raise PromptEncoderUnavailable("CLAP gives the same embedding for different texts: the encoder is degenerate")
