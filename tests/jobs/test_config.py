"""Job configs: each default is defined once (the dataclass), the shipped YAML files agree
with it, and `--help` shows them; the package works when installed as a wheel."""

import dataclasses
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from jobs import bench, demo, evaluate, export, ingest, prepare_train, prompts, report, select, separate, train
from jobs.engine import config

CONFIGS = {
    "separate": separate.SeparateConfig,
    "ingest": ingest.IngestConfig,
    "export": export.ExportConfig,
    "prepare_train": prepare_train.PrepareTrainConfig,
    "train": train.TrainConfig,
    "evaluate": evaluate.EvaluateConfig,
    "prompts": prompts.PromptsConfig,
    "demo": demo.DemoConfig,
    "bench": bench.BenchConfig,
    "select": select.SelectConfig,
    "report": report.ReportConfig,
}


@pytest.mark.parametrize("job", sorted(CONFIGS))
def test_yaml_file_and_dataclass_agree_key_for_key(job):
    cls = CONFIGS[job]
    path = config.default_config_path(job)
    raw = yaml.safe_load(path.read_text())
    assert config.to_dict(config.from_dict(cls, raw)) == config.to_dict(cls()), f"{path} and {cls.__name__} disagree"
    listed, fields = ({k for k, _ in config.flat_items(d)} for d in (raw, config.to_dict(cls())))
    assert listed == fields, f"{path} lists other keys than {cls.__name__}: {sorted(listed ^ fields)}"


def test_an_unknown_yaml_key_is_refused_with_the_valid_ones(tmp_path):
    path = tmp_path / "separate.yaml"
    path.write_text("inptu: s3://x\n")
    with pytest.raises(ValueError, match="unknown config key.*inptu.*valid.*input"):
        config.load_config(separate.SeparateConfig, path)


def test_every_job_config_is_a_frozen_dataclass():
    for cls in CONFIGS.values():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls


def test_flags_paths_and_overrides_land_on_their_config_keys():
    cfg = ingest.parse_args(
        ["in", "--actors", "1:3", "--stall-timeout", "5", "--retry-errors", "out", "ray.batch_size=3", "-v"]
    )
    assert (cfg.input, cfg.output, cfg.ray.num_actors, cfg.ray.batch_size) == ("in", "out", "1:3", 3)
    assert (cfg.run.stall_timeout_s, cfg.run.retry_errors) == (5.0, True)
    assert ingest.parse_args(["--input", "in", "out"]).output == "out"  # a path fills the key no flag gave
    cfg = train.parse_args(["data", "run", "--workers", "2", "--max-steps", "7"])
    assert (cfg.data, cfg.output, cfg.ray.num_actors, cfg.max_steps) == ("data", "run", 2, 7)


def test_a_stray_positional_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_:
        separate.parse_args(["--input", "in", "somewhere"])
    assert exit_.value.code == 2


def test_help_shows_every_default():
    done = subprocess.run(
        [sys.executable, "-m", "jobs.separate", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for line in (
        "ray.num_actors=1",
        "run.max_error_fraction=0.1",
        "separator.window_frames=500",
        "run.stall_timeout_s=600.0",
    ):
        assert line in done.stdout, line


def test_installed_wheel_finds_its_default_configs_from_another_directory(tmp_path):
    """`pip install .` (not editable): the configs ship in the package. The wheel goes into
    a fresh virtualenv that borrows this environment's dependencies (installing torch again
    would take minutes), without its editable link to the repo."""
    repo = tmp_path / "src"  # a copy: building writes build/ and egg-info into the source folder
    shutil.copytree(
        Path(__file__).resolve().parents[2],
        repo,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "demo_out", "bench_out", "__pycache__", ".pytest_cache"
        ),
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(repo)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # a plain path: its .pth files are not run
    wheel = next(wheels.glob("codecsep-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "jobs.cli", "separate", "--help"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"defaults from {site}" in done.stdout and "ray.num_actors=1" in done.stdout


def test_missing_settings_are_named_with_how_to_give_them():
    from jobs import export, select

    with pytest.raises(ValueError, match=r"missing setting\(s\): output \(codecsep export SRC DST\)"):
        export.ExportConfig(input="x").check()
    with pytest.raises(ValueError, match=r"missing setting\(s\): input, prompt \(flags --input --prompt\)"):
        select.SelectConfig(output="y").check()
