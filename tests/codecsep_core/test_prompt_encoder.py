"""PromptEncoder wiring on a random-weight CLAP of the real architecture, fully offline.

No model weights can be downloaded here, so the Hugging Face cache that laion-clap reads is
synthetic: a real-size roberta-base with random weights, small generated BPE / WordPiece
vocabularies for the roberta-base, bert-base-uncased and facebook/bart-base tokenizers, and a
random-weight HTSAT-base + RoBERTa CLAP checkpoint saved as laion-clap's training writes it
({"state_dict": ...}, "module."-prefixed keys, the stale position_ids buffer). That is the only
thing mocked: laion-clap, transformers and huggingface_hub run for real.

`import laion_clap` binds hub settings at import time, so each scenario runs in its own
subprocess with its own environment. HF_ENDPOINT points at a closed local port everywhere, so no
scenario can reach the real hub, and any network attempt would show up as huggingface_hub
retry warnings (and tens of seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = "music_speech_audioset_epoch_15_esc_89.98.pt"
REVISION = "0" * 40
WORDS = ("speech", "dog", "barking", "background", "music", "rain", "a", "and", "the", "sound")
ROBERTA_BASE_CONFIG = {
    "architectures": ["RobertaForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514,
    "model_type": "roberta",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "type_vocab_size": 1,
    "vocab_size": 50265,
}

# Random roberta-base weights, then a random CLAP (which loads them through from_pretrained).
BUILD_SCRIPT = """
import sys, torch
from transformers import RobertaConfig, RobertaModel
roberta_dir, ckpt = sys.argv[1:3]
torch.manual_seed(0)
RobertaModel(RobertaConfig.from_pretrained(roberta_dir)).save_pretrained(roberta_dir)
from laion_clap.clap_module import create_model
model, _ = create_model("HTSAT-base", "roberta", enable_fusion=False)
state = {"module." + k: v for k, v in model.state_dict().items()}
state["module.text_branch.embeddings.position_ids"] = torch.arange(514)[None]
torch.save({"epoch": 15, "name": "synthetic", "state_dict": state}, ckpt)
"""

ENCODE_SCRIPT = """
import json, sys, torch
from codecsep_core.prompt_encoder import PromptEncoder
out = sys.argv[1]
enc = PromptEncoder()
texts = ["speech", "dog barking", "background music", "speech"]
results = {"batch": enc.encode(texts), "again": enc.encode(texts),
           "single": enc.encode(["dog barking"]), "empty": enc.encode([])}
enc.batch_size = 3
results["chunked"] = enc.encode(texts)
torch.save(results, out + ".pt")
try:
    enc.encode("speech")
    str_rejected = False
except TypeError:
    str_rejected = True
json.dump({"name": enc.name, "str_rejected": str_rejected}, open(out + ".json", "w"))
"""

# Example clips through the audio branch: two kinds of synthetic source at 16 kHz, one of them
# also at 48 kHz, and a 12 s clip (longer than the 10 s the non-fusion model takes at once).
ENCODE_AUDIO_SCRIPT = """
import sys, numpy as np, torch
from codecsep_core.prompt_encoder import PromptEncoder
from jobs import synthetic
rng = np.random.default_rng(0)
tone, noise = (synthetic.source(k, 2.0, 16000, rng) for k in ("tone", "noise"))
tone48 = np.interp(np.arange(96000) / 3, np.arange(32000), tone).astype(np.float32)
long = synthetic.source("clicks", 12.0, 16000, rng)
enc = PromptEncoder()
results = {"clips": enc.encode_audio([tone, noise, long], 16000), "again": enc.encode_audio([long, tone], 16000),
           "tone48": enc.encode_audio([tone48], 48000), "text": enc.encode(["speech"])}
try:
    enc.encode_audio([np.zeros((2, 100), np.float32)], 16000)
    results["stereo_rejected"] = torch.tensor(False)
except ValueError:
    results["stereo_rejected"] = torch.tensor(True)
torch.save(results, sys.argv[1])
"""

CONSTRUCT_SCRIPT = """
import sys
from codecsep_core.prompt_encoder import PromptEncoder, PromptEncoderUnavailable
try:
    PromptEncoder(sys.argv[1] if len(sys.argv) > 1 else None)
except PromptEncoderUnavailable as e:
    print("UNAVAILABLE:", e)
    sys.exit(3)
print("BUILT")
"""


def byte_alphabet() -> list[str]:
    """GPT-2's byte-level BPE alphabet (transformers' bytes_to_unicode): every text is spellable."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def bpe_vocab(words: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """A small byte-level BPE: specials, the byte alphabet, left-to-right merges of a few words."""
    vocab = {t: i for i, t in enumerate(("<s>", "<pad>", "</s>", "<unk>"))}
    for ch in byte_alphabet():
        vocab.setdefault(ch, len(vocab))
    merges: dict[str, None] = {}
    for word in words:
        pieces = ["Ġ", *word]
        while len(pieces) > 1:
            merges[f"{pieces[0]} {pieces[1]}"] = None
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    vocab["<mask>"] = len(vocab)
    return vocab, list(merges)


def snapshot(hf_home: Path, repo: str) -> Path:
    """A repo's snapshot folder in the standard hub cache layout (refs/main -> snapshots/<rev>)."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def write_bpe(folder: Path, vocab: dict[str, int], merges: list[str]) -> None:
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")


def write_tokenizers(hf_home: Path, roberta_vocab: tuple[dict[str, int], list[str]]) -> None:
    roberta = snapshot(hf_home, "roberta-base")
    (roberta / "config.json").write_text(json.dumps(ROBERTA_BASE_CONFIG))
    write_bpe(roberta, *roberta_vocab)
    write_bpe(snapshot(hf_home, "facebook/bart-base"), *bpe_vocab(WORDS))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    wordpiece = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *WORDS, *(f"##{c}" for c in letters)]
    (snapshot(hf_home, "bert-base-uncased") / "vocab.txt").write_text("\n".join(dict.fromkeys(wordpiece)) + "\n")


def env_for(hf_home: Path, offline: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(REPO_ROOT))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run_script(
    script: str, *args: str, hf_home: Path, offline: bool = False, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env_for(hf_home, offline),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.monotonic() - start


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """The synthetic HF cache, with the random CLAP checkpoint as the cached default checkpoint."""
    home = tmp_path_factory.mktemp("hf_home")
    write_tokenizers(home, bpe_vocab(WORDS))
    ckpt = snapshot(home, "lukewys/laion_clap") / DEFAULT_CHECKPOINT
    proc, _ = run_script(BUILD_SCRIPT, str(snapshot(home, "roberta-base")), str(ckpt), hf_home=home, offline=True)
    assert proc.returncode == 0, proc.stderr
    return home


@pytest.fixture(scope="session")
def checkpoint(hf_home) -> Path:
    return snapshot(hf_home, "lukewys/laion_clap") / DEFAULT_CHECKPOINT


@pytest.fixture(scope="session")
def encoded(hf_home, tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict]:
    """One encoder, built not offline: every hub file must come from the cache without a lookup."""
    out = tmp_path_factory.mktemp("encoded") / "result"
    proc, _ = run_script(ENCODE_SCRIPT, str(out), hf_home=hf_home)
    assert proc.returncode == 0, proc.stderr
    assert "Retrying" not in proc.stderr, proc.stderr
    return torch.load(f"{out}.pt", weights_only=True), json.loads(Path(f"{out}.json").read_text())


def test_import_does_not_load_laion_clap():
    code = "import sys, codecsep_core, codecsep_core.prompt_encoder\nassert 'laion_clap' not in sys.modules"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 0, proc.stderr


def test_encode_shape_dtype_and_unit_norm(encoded):
    results, _ = encoded
    batch = results["batch"]
    assert batch.shape == (4, 512) and batch.dtype == torch.float32
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)


def test_encode_is_deterministic_and_text_dependent(encoded):
    results, _ = encoded
    batch = results["batch"]
    torch.testing.assert_close(results["again"], batch, atol=0, rtol=0)
    torch.testing.assert_close(batch[3], batch[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(results["single"][0], batch[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(results["chunked"], batch, atol=1e-5, rtol=0)
    for i in range(3):
        for j in range(i + 1, 3):
            assert (batch[i] - batch[j]).abs().max() > 1e-4, (i, j)


def test_encode_empty_list(encoded):
    empty = encoded[0]["empty"]
    assert empty.shape == (0, 512) and empty.dtype == torch.float32


def test_encode_rejects_a_bare_string(encoded):
    assert encoded[1]["str_rejected"]


def test_name_says_model_and_checkpoint(encoded):
    assert encoded[1]["name"] == f"laion-clap:HTSAT-base+roberta:{DEFAULT_CHECKPOINT}"


def test_missing_checkpoint_path_is_named(tmp_path):
    from codecsep_core.prompt_encoder import PromptEncoder, PromptEncoderUnavailable

    missing = tmp_path / "nope" / "clap.pt"
    with pytest.raises(PromptEncoderUnavailable, match="nope/clap.pt"):
        PromptEncoder(missing)


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "hub-unreachable"])
def test_empty_hf_cache_fails_fast_naming_roberta(tmp_path, offline):
    ckpt = tmp_path / "clap.pt"
    ckpt.write_bytes(b"not read: the hub check comes first")
    proc, seconds = run_script(CONSTRUCT_SCRIPT, str(ckpt), hf_home=tmp_path / "empty_hf", offline=offline, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert seconds < 20
    message = proc.stdout
    assert "roberta-base" in message and "model.safetensors" in message and "HF_HOME" in message
    assert ("offline mode" if offline else "unreachable") in message


def test_default_checkpoint_missing_offline_is_named(tmp_path):
    home = tmp_path / "hf"
    write_tokenizers(home, bpe_vocab(WORDS))
    proc, seconds = run_script(CONSTRUCT_SCRIPT, hf_home=home, offline=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert seconds < 20
    assert DEFAULT_CHECKPOINT in proc.stdout and "checkpoint=" in proc.stdout


@pytest.mark.parametrize("content", ["garbage", "pickled-object"])
def test_bad_checkpoint_is_refused_before_building(hf_home, tmp_path, content):
    ckpt = tmp_path / "clap.pt"
    if content == "garbage":
        ckpt.write_bytes(b"\x00 definitely not a torch file")
    else:
        torch.save({"state_dict": {}, "args": subprocess.CompletedProcess([], 0)}, ckpt)
    proc, seconds = run_script(CONSTRUCT_SCRIPT, str(ckpt), hf_home=hf_home, offline=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert str(ckpt) in proc.stdout
    assert ("trust_checkpoint=True" if content == "pickled-object" else "not a torch checkpoint") in proc.stdout
    assert seconds < 20


def test_tokenizer_that_knows_no_words_is_refused(hf_home, checkpoint, tmp_path):
    """A vocabulary of special tokens only maps every prompt to <unk>: same vector for all prompts."""
    home = tmp_path / "hf"
    specials_only = {t: i for i, t in enumerate(("<s>", "<pad>", "</s>", "<unk>", "<mask>"))}
    write_tokenizers(home, (specials_only, []))
    weights = "model.safetensors"
    (snapshot(home, "roberta-base") / weights).symlink_to(snapshot(hf_home, "roberta-base") / weights)
    (snapshot(home, "roberta-base") / "config.json").write_text(
        (snapshot(hf_home, "roberta-base") / "config.json").read_text()
    )
    proc, _ = run_script(CONSTRUCT_SCRIPT, str(checkpoint), hf_home=home)
    assert proc.returncode == 3, proc.stderr
    assert "tokenizer" in proc.stdout and "vocab.json" in proc.stdout


def test_encode_audio_through_the_clap_audio_branch(hf_home, tmp_path):
    out = tmp_path / "audio.pt"
    proc, _ = run_script(ENCODE_AUDIO_SCRIPT, str(out), hf_home=hf_home, offline=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = torch.load(out, weights_only=True)
    clips = r["clips"]
    assert clips.shape == (3, 512) and clips.dtype == torch.float32
    torch.testing.assert_close(clips.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(r["again"], clips[[2, 0]], atol=1e-5, rtol=0)  # the 12 s clip too: no random crop
    assert (clips[0] - clips[1]).abs().max() > 1e-4  # different sounds, different vectors
    assert torch.dot(r["tone48"][0], clips[0]) > 0.99  # the same sound at another rate: nearly the same vector
    assert r["text"].shape == (1, 512)  # one encoder serves both branches
    assert bool(r["stereo_rejected"])


PROMPTS_JOB_SCRIPT = """
import sys
from jobs import cli
sys.exit(cli.main(["prompts", *sys.argv[1:]]))
"""


def test_prompts_job_puts_example_clips_in_the_table(hf_home, dac16_checkpoint, tmp_path):
    """`codecsep prompts --audio NAME=PATH` with a wav file, a .dac file and a code-shard row."""
    import numpy as np
    import soundfile as sf

    from codecsep_core import DAC_CODECS
    from codecsep_core.dac_codec import DacCodec
    from jobs import synthetic
    from storage import shards
    from storage.dacfile import DacFile, dac_to_rows, write_dac
    from storage.prompt_table import read_prompt_table
    from storage.schema import DAC_SHARD_SCHEMA, table_from_rows

    audio = synthetic.source("tone", 1.0, 16000, np.random.default_rng(0))
    sf.write(str(tmp_path / "tone.wav"), audio, 16000)
    codes = DacCodec.load(str(dac16_checkpoint)).encode(audio[None], 16000)
    dac = DacFile(
        codes=codes,
        chunk_length=codes.shape[-1],
        original_length=len(audio),
        input_db=-20.0,
        channels=1,
        sample_rate=16000,
        padding=True,
    )
    (tmp_path / "tone.dac").write_bytes(write_dac(dac))
    with shards.ShardWriter(str(tmp_path / "codes"), "w") as w:
        w.write(table_from_rows(dac_to_rows(dac, "clip", DAC_CODECS["dac_16khz"]), DAC_SHARD_SCHEMA))
    table = tmp_path / "prompts.parquet"
    proc, _ = run_script(
        PROMPTS_JOB_SCRIPT,
        "--output",
        str(table),
        "--prompt",
        "speech",
        "--audio",
        f"tone={tmp_path / 'tone.wav'}",
        "--audio",
        f"tone_dac={tmp_path / 'tone.dac'}",
        "--audio",
        f"tone_codes={tmp_path / 'codes'}#clip",
        "--codec-weights",
        str(dac16_checkpoint),
        hf_home=hf_home,
        offline=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t = read_prompt_table(str(table))
    assert t.prompts == ("speech", "tone", "tone_dac", "tone_codes")
    assert t.branches == ("text", "audio", "audio", "audio")
    assert t.encoder == f"laion-clap:HTSAT-base+roberta:{DEFAULT_CHECKPOINT}"
    np.testing.assert_allclose(np.linalg.norm(t.embeddings, axis=1), 1.0, atol=1e-5)
    dac_vec, codes_vec = t.vectors(["tone_dac", "tone_codes"])
    assert float(dac_vec @ codes_vec) > 0.999  # the same codes, decoded the same way

    # The example runs through `separate` like a text prompt, end to end.
    from codecsep_core import Masker, MaskerConfig, save_masker

    save_masker(Masker(MaskerConfig.preset("tiny")), tmp_path / "masker.safetensors")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.separate",
            "--input",
            str(tmp_path / "codes"),
            "--output",
            str(tmp_path / "out"),
            "--masker",
            str(tmp_path / "masker.safetensors"),
            "--codec-weights",
            str(dac16_checkpoint),
            "--prompt-table",
            str(table),
            "--prompt",
            "tone",
            "--prompt",
            "speech",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = shards.read_table(str(tmp_path / "out"), columns=["id", "prompt", "stem"]).to_pylist()
    assert sorted((r["id"], r["prompt"], r["stem"]) for r in out) == [
        ("clip", "speech", "target"),
        ("clip", "tone", "target"),
    ]
