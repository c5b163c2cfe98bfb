# Everything installs into .venv at the repo root, idempotently (a stamp file per step).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-capable default; a CUDA user sets TORCH_SPEC to their own build (README "Dependencies"),
# or TORCH_SPEC= (empty) to keep the torch already in the venv.
TORCH_SPEC ?= torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0
DAC_SPEC := descript-audiotools==0.7.2 descript-audio-codec==1.0.0

.PHONY: install install-browser install-sounds lint test demo bench gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install --quiet $(TORCH_SPEC))
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps $(DAC_SPEC)
	touch $@

# ruff (lint + format) on the whole tree, mypy on codecsep_core, storage and jobs/engine (pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Headless Chromium for the report's browser test (Debian's package; run as root in CI).
install-browser:
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# Debian's espeak-ng, fluidsynth, a General MIDI soundfont and the freedesktop sound theme:
# the real sounds of the demo's scenes (jobs.scenes). Needs root, as install-browser does.
SOUND_PACKAGES := espeak-ng fluidsynth timgm6mb-soundfont sound-theme-freedesktop
install-sounds:
	dpkg -s $(SOUND_PACKAGES) >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SOUND_PACKAGES))

test: lint install-browser install-sounds
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -n 2 --dist loadfile tests

# Scenes of real sounds where the packages can be installed; otherwise the demo says why in
# one line and runs on synthetic sounds.
demo: install
	-@$(MAKE) --no-print-directory install-sounds
	RAY_AUTH_MODE=disabled $(VENV)/bin/codecsep demo --output demo_out

bench: install
	RAY_AUTH_MODE=disabled $(VENV)/bin/codecsep bench --output bench_out docs=docs/benchmarks.md

# On a machine with one CUDA GPU (install a CUDA torch build: README "Dependencies"), in
# under 8 minutes: the CUDA tests (they skip without a GPU) and the bench's GPU section.
gpu-check: install
	RAY_AUTH_MODE=disabled timeout 300 $(PY) -m pytest -q -rs tests/jobs/test_gpu.py
	RAY_AUTH_MODE=disabled timeout 300 $(VENV)/bin/codecsep bench --gpu --output bench_out repeats=2

clean:
	rm -rf $(VENV) demo_out bench_out
