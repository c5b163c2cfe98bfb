"""Divide-and-Remaster-style scenes of real sounds, made offline from Debian packages.

Speech is espeak-ng reading sentences drawn from a word list (several languages and voice
variants), music is fluidsynth rendering MIDI this module composes (chords, melody, bass,
sometimes drums; General MIDI soundfont `timgm6mb-soundfont`), and sound effects are
sound-theme-freedesktop's event sounds plus generated impacts, whooshes and engine hums at
random times. Each scene is `seconds` long (DnR's 10 s), its three stems kept, written in
prepare-train's `dnr` layout (`<scene>/mix.wav, speech.wav, music.wav, sfx.wav,
annots.csv`) so the existing pipeline ingests it; `scene.json` says what it is made of.

Levels follow DnR v2's spirit (speech -17, effects -21, music -24 LUFS): speech loudest,
effects about 4 dB and music about 7 dB under it, each with a random offset. Voices,
instruments and effect files are split into a training and a held-out pool, so held-out
scenes hold no voice, instrument or effect file seen in training. A scene depends only on
its seed, split and index: the same call writes the same audio.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.audio import read_audio

RATE = 16000
STEMS = ("speech", "music", "sfx")
PROMPTS = {"speech": "speech", "music": "music", "sfx": "sound effects"}  # DnR's prompts per stem
APT_PACKAGES = ("espeak-ng", "fluidsynth", "timgm6mb-soundfont", "sound-theme-freedesktop")
SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2")
EFFECTS_DIR = Path("/usr/share/sounds/freedesktop/stereo")
SPLITS = ("train", "heldout", "codec")  # codec: other scenes of the training pools, to fit a codec on
SPEECH_DB, SFX_DB, MUSIC_DB = -20.0, -24.0, -27.0  # stem RMS in dBFS before the random offsets
LEVEL_JITTER_DB = 2.0
TOOL_TIMEOUT_S = 60  # one utterance or one piece; a hung tool must not hang a job

WORDS = (
    "the a one two three small large old new red green blue river city garden morning evening "
    "window table paper music light water stone forest road house winter summer friend teacher "
    "doctor market station letter story picture mountain island bridge village kitchen yellow "
    "quickly slowly often never always today tomorrow yesterday under over near behind between "
    "walks runs reads writes opens closes finds brings carries watches builds paints sings "
    "remembers follows answers waits travels listens learns moves turns stops begins and but "
    "because while after before every many some quiet bright heavy warm cold early late"
).split()
# espeak-ng voices: language + variant. Held-out ones share neither with training.
TRAIN_VOICES = tuple(f"{lang}+{v}" for lang in ("en-us", "en", "de", "fr", "nl") for v in ("m1", "m3", "f2", "f4"))
HELDOUT_VOICES = tuple(f"{lang}+{v}" for lang in ("en-gb-scotland", "es", "it") for v in ("m2", "f1", "f3"))
# General MIDI programs (0-based): (chords, melody, bass) pools.
TRAIN_PROGRAMS = ((0, 4, 16, 24, 48), (73, 56, 65, 11, 0), (32, 33))
HELDOUT_PROGRAMS = ((6, 19, 46), (40, 71, 80, 68), (34, 38))
PROGRESSIONS = ((0, 5, 3, 4), (0, 3, 4, 4), (5, 3, 0, 4), (0, 4, 5, 3))  # scale degrees, one chord a bar
MAJOR = (0, 2, 4, 5, 7, 9, 11)
GENERATED_EFFECTS = ("impact", "whoosh", "engine hum")


def soundfont() -> Path | None:
    return next((Path(p) for p in SOUNDFONTS if Path(p).exists()), None)


def effect_files() -> list[Path]:
    """The theme's event sounds, without its spoken channel names and test signal (speech, not effects)."""
    return sorted(p for p in EFFECTS_DIR.glob("*.oga") if not p.name.startswith("audio-"))


def missing_packages() -> list[str]:
    """The Debian packages (APT_PACKAGES) whose files this machine lacks."""
    present = {
        "espeak-ng": shutil.which("espeak-ng") is not None,
        "fluidsynth": shutil.which("fluidsynth") is not None,
        "timgm6mb-soundfont": soundfont() is not None,
        "sound-theme-freedesktop": bool(effect_files()),
    }
    return [name for name, ok in present.items() if not ok]


@dataclass(frozen=True)
class Pools:
    voices: tuple[str, ...]
    programs: tuple[tuple[int, ...], ...]
    effects: tuple[Path, ...]


def pools(split: str) -> Pools:
    """Training (and codec-fitting) pools, or the held-out ones: every fourth effect file is held out."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = effect_files()
    if split == "heldout":
        return Pools(HELDOUT_VOICES, HELDOUT_PROGRAMS, tuple(files[1::4]))
    return Pools(TRAIN_VOICES, TRAIN_PROGRAMS, tuple(f for k, f in enumerate(files) if k % 4 != 1))


def _tool(args: list[str]) -> bytes:
    done = subprocess.run(args, capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def _read_mono(data: bytes | Path) -> np.ndarray:
    """Audio at RATE, mono float32."""
    from codecsep_core.dac_codec import resample

    audio, rate = read_audio(data if isinstance(data, bytes) else data.read_bytes())
    return resample(audio.mean(axis=0)[None], rate, RATE)[0].astype(np.float32)


def utterance(rng: np.random.Generator, voice: str) -> np.ndarray:
    """One sentence of 4-9 words in `voice`, at a random rate and pitch."""
    words = " ".join(rng.choice(WORDS, int(rng.integers(4, 10))))
    speed, pitch = int(rng.integers(130, 190)), int(rng.integers(30, 70))
    return _read_mono(_tool(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", words]))


def speech(rng: np.random.Generator, pool: Pools, n: int) -> np.ndarray:
    """One speaker reading sentences with pauses between them, across the scene."""
    voice = str(rng.choice(pool.voices))
    out = np.zeros(n, np.float32)
    at = int(rng.uniform(0.0, 0.8) * RATE)
    while at < n - RATE // 2:
        said = utterance(rng, voice)[: n - at]
        out[at : at + len(said)] += said
        at += len(said) + int(rng.uniform(0.25, 1.0) * RATE)
    return out


def _midi_track(events: list[tuple[int, bytes]]) -> bytes:
    """A Standard MIDI File track of (absolute tick, message) events."""

    def vlq(value: int) -> bytes:
        out = [value & 0x7F]
        while value > 127:
            value >>= 7
            out.append((value & 0x7F) | 0x80)
        return bytes(reversed(out))

    data, now = b"", 0
    for tick, message in sorted(events, key=lambda e: e[0]):
        data += vlq(tick - now) + message
        now = tick
    data += b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(data)) + data


def composition(rng: np.random.Generator, pool: Pools, seconds: float) -> bytes:
    """A MIDI file: a chord progression, a melody over it, a bass line, drums in half the pieces."""
    tpq, bpm = 480, int(rng.integers(80, 141))
    key = int(rng.integers(45, 57))
    chords_program, melody_program, bass_program = (int(rng.choice(p)) for p in pool.programs)
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    bars = int(np.ceil(seconds * bpm / 60 / 4)) + 1
    events = [(0, b"\xff\x51\x03" + (60_000_000 // bpm).to_bytes(3, "big"))]
    events += [
        (0, bytes([0xC0 | ch, program])) for ch, program in enumerate((chords_program, melody_program, bass_program))
    ]

    def note(ch: int, pitch: int, start: int, length: int, velocity: int) -> None:
        events.extend([(start, bytes([0x90 | ch, pitch, velocity])), (start + length, bytes([0x80 | ch, pitch, 0]))])

    def degree(d: int, octave: int = 0) -> int:
        return key + MAJOR[d % 7] + 12 * (d // 7 + octave)

    drums = rng.random() < 0.5
    for bar in range(bars):
        root, start = progression[bar % len(progression)], bar * 4 * tpq
        for d in (root, root + 2, root + 4):
            note(0, degree(d), start, 4 * tpq - 10, 70)
        for beat in range(4):
            note(2, degree(root, -1), start + beat * tpq, tpq - 20, 85)
        t = start
        while t < start + 4 * tpq:
            length = int(rng.choice([tpq // 2, tpq, tpq * 3 // 2]))
            note(1, degree(root + int(rng.choice([0, 2, 4, 5, 7])), 1), t, length - 10, int(rng.integers(80, 110)))
            t += length
        if drums:
            for eighth in range(8):
                tick = start + eighth * tpq // 2
                note(9, 42, tick, tpq // 4, 60)
                if eighth in (0, 4):
                    note(9, 36, tick, tpq // 4, 100)
                if eighth in (2, 6):
                    note(9, 38, tick, tpq // 4, 90)
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + _midi_track(events)


def music(rng: np.random.Generator, pool: Pools, n: int) -> np.ndarray:
    font = soundfont()
    if font is None:
        raise RuntimeError(f"no General MIDI soundfont at {SOUNDFONTS} (apt-get install timgm6mb-soundfont)")
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
        mid.write_bytes(composition(rng, pool, n / RATE))
        _tool(["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(RATE), "-F", str(wav), str(font), str(mid)])
        audio = _read_mono(wav)
    return np.pad(audio, (0, max(0, n - len(audio))))[:n]


def generated_effect(kind: str, rng: np.random.Generator) -> np.ndarray:
    """An impact (decaying filtered noise), a whoosh (a noise band sweeping up or down) or an
    engine hum (a low sawtooth with its harmonics, throbbing)."""
    n = int(
        {"impact": rng.uniform(0.2, 0.6), "whoosh": rng.uniform(0.6, 1.5), "engine hum": rng.uniform(1.5, 3.0)}[kind]
        * RATE
    )
    t = np.arange(n) / RATE
    if kind == "engine hum":
        f0 = rng.uniform(35, 90)
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 12))
        x = x * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 12) * t))
    else:
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / RATE)
        if kind == "impact":
            spec *= 1 / (1 + freqs / rng.uniform(200, 800))
            x = np.fft.irfft(spec, n) * np.exp(-t / rng.uniform(0.03, 0.12))
        else:
            x = np.fft.irfft(spec * np.exp(-(((freqs - rng.uniform(800, 3000)) / 600) ** 2)), n)
            x = x * np.sin(np.pi * t / t[-1]) ** 2
    ramp = np.minimum(1, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * RATE))
    return (x * ramp).astype(np.float32)


def effects(rng: np.random.Generator, pool: Pools, n: int) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """2-5 events at random times; -> (stem, [(label, start s, end s)])."""
    out, annots = np.zeros(n, np.float32), []
    for _ in range(int(rng.integers(2, 6))):
        if pool.effects and rng.random() < 0.6:
            path = pool.effects[int(rng.integers(len(pool.effects)))]
            event, label = _read_mono(path), path.stem.replace("-", " ")
        else:
            label = str(rng.choice(GENERATED_EFFECTS))
            event = generated_effect(label, rng)
        event = event[: n // 2] / (np.abs(event).max() + 1e-9) * np.float32(rng.uniform(0.5, 1.0))
        at = int(rng.integers(0, n - len(event)))
        out[at : at + len(event)] += event
        annots.append(
            (label, float(np.floor(at / RATE * 1e3) / 1e3), float(np.ceil((at + len(event)) / RATE * 1e3) / 1e3))
        )
    return out, sorted(annots, key=lambda a: a[1])


def _sum(stems: dict[str, np.ndarray]) -> np.ndarray:
    return np.sum(np.stack(list(stems.values())), axis=0, dtype=np.float32)


def _at_db(x: np.ndarray, db: float) -> np.ndarray:
    return (x * (10 ** (db / 20) / (np.sqrt(np.mean(x**2)) + 1e-12))).astype(np.float32)


@dataclass
class Scene:
    name: str
    stems: dict[str, np.ndarray]  # STEMS -> float32 [n] at RATE; the mixture is their sum
    annots: list[tuple[str, float, float]]  # sound effects: (label, start s, end s)
    made_of: dict

    @property
    def mix(self) -> np.ndarray:
        return _sum(self.stems)


def scene(split: str, index: int, seconds: float = 10.0, seed: int = 0) -> Scene:
    """Scene `index` of `split` (its pools; see the module docstring)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    pool, n = pools(split), int(seconds * RATE)
    sfx, annots = effects(rng, pool, n)
    levels = {"speech": SPEECH_DB, "music": MUSIC_DB, "sfx": SFX_DB}
    raw = {"speech": speech(rng, pool, n), "music": music(rng, pool, n), "sfx": sfx}
    stems = {k: _at_db(raw[k], levels[k] + rng.uniform(-LEVEL_JITTER_DB, LEVEL_JITTER_DB)) for k in STEMS}
    peak = float(np.abs(_sum(stems)).max())
    if peak > 0.95:
        stems = {k: v * np.float32(0.95 / peak) for k, v in stems.items()}
    rms_db = {k: round(20 * float(np.log10(np.sqrt(np.mean(v**2)) + 1e-12)), 2) for k, v in stems.items()}
    made_of = {"split": split, "index": index, "seed": seed, "rms_dbfs": rms_db, "effects": [a[0] for a in annots]}
    return Scene(f"{split}-{index:04d}", stems, annots, made_of)


def write_scene(s: Scene, folder: Path) -> Path:
    """`folder/<name>/`: mix.wav and one wav per stem (float, RATE), annots.csv, scene.json."""
    import soundfile as sf

    path = folder / s.name
    path.mkdir(parents=True, exist_ok=True)
    for name, audio in (("mix", s.mix), *s.stems.items()):
        sf.write(str(path / f"{name}.wav"), audio, RATE, subtype="FLOAT")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["label", "start", "end"])
    writer.writerows(s.annots)
    (path / "annots.csv").write_text(buf.getvalue())
    (path / "scene.json").write_text(json.dumps(s.made_of, indent=1))
    return path


def write_scenes(folder: str | Path, n: int, split: str, seconds: float = 10.0, seed: int = 0) -> Path:
    """n scenes of `split` under `folder` in prepare-train's `dnr` layout."""
    missing = missing_packages()
    if missing:
        raise RuntimeError(f"scenes need the Debian packages {', '.join(missing)} (make install-sounds)")
    folder = Path(folder)
    for index in range(n):
        write_scene(scene(split, index, seconds, seed), folder)
    return folder


def fitted_scene_codec(path: str | Path, seed: int = 0, n_scenes: int = 12, excerpt_seconds: float = 2.0) -> Path:
    """A fixed-seed random DAC 16 kHz fitted (`codecsep_core.codec_fit`) to excerpts of the
    stems and mixtures of `codec` scenes: other scenes than the ones it will encode, as a
    real codec is trained on other audio."""
    from codecsep_core.codec_fit import save_fitted_random_dac

    rng = np.random.default_rng([seed, SPLITS.index("codec")])
    clips = []
    for index in range(n_scenes):
        s = scene("codec", index, seconds=max(excerpt_seconds, 4.0), seed=seed)
        m = int(excerpt_seconds * RATE)
        at = int(rng.integers(0, len(s.mix) - m + 1))
        clips += [x[at : at + m] for x in (s.mix, *s.stems.values())]
    return save_fitted_random_dac(clips, path, seed)
