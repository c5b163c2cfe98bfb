"""The command a cluster runs the separate job with: submitted to a real job server by
test_job_submission.py and required, word for word, as the KubeRay RayJob's entrypoint.
Its settings are environment variables so that one string serves both (the job server
runs an entrypoint through a shell)."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RAYJOB_MANIFEST = REPO / "configs" / "kuberay" / "separate-rayjob.yaml"

ENTRYPOINT = (
    "python -m jobs.separate --address auto"
    ' --input "$CODECSEP_INPUT" --output "$CODECSEP_OUTPUT" --masker "$CODECSEP_MASKER"'
    ' --codec-tables "$CODECSEP_CODEC_TABLES" --prompt-table "$CODECSEP_PROMPT_TABLE"'
    " --prompt speech --prompt rain"
    ' --actors "$CODECSEP_ACTORS" --gpus-per-actor "$CODECSEP_GPUS_PER_ACTOR" --cpus-per-actor "$CODECSEP_CPUS_PER_ACTOR"'
)


def entrypoint_env(uris: dict[str, str], actors: int, gpus_per_actor: float, cpus_per_actor: float) -> dict[str, str]:
    """The entrypoint's variables for these job URIs (separate_job.setup_inputs)."""
    return {
        "CODECSEP_INPUT": uris["input"],
        "CODECSEP_OUTPUT": uris["output"],
        "CODECSEP_MASKER": uris["masker"],
        "CODECSEP_CODEC_TABLES": uris["codec_tables"],
        "CODECSEP_PROMPT_TABLE": uris["prompt_table"],
        "CODECSEP_ACTORS": str(actors),
        "CODECSEP_GPUS_PER_ACTOR": str(gpus_per_actor),
        "CODECSEP_CPUS_PER_ACTOR": str(cpus_per_actor),
    }


def load_rayjob() -> dict:
    return yaml.safe_load(RAYJOB_MANIFEST.read_text())
