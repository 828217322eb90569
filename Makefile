# make test : set up .venv (package + test extras + the upstream oracle), ruff, pytest
# make run  : speak text through a Dora dataflow into out/<name>.wav (VOICE=..., TEXT=..., NAME=...)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
ORACLE_DEPS := einops tqdm packaging torchmetrics wordsegment tokenizers cn2an g2p_en nltk inflect \
               jieba_fast pypinyin

.PHONY: test lint run setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile $(wildcard dora_primespeech_mlx/native/*.c dora_primespeech_mlx/native/*.h)
	@bash .ci/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the CPU build, so nothing pulls a CUDA build (oracle only, never at run time)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps gpt-sovits-cpufast==0.1.0
	$(PIP) install -q $(ORACLE_DEPS)
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	# one BLAS thread: the suite runs torch and MLX side by side in one process
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q

# VOICE, TEXT, TEXT_FILE and NAME given on the command line reach scripts/run.py through the environment.
run: $(STAMP)
	@$(PY) scripts/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out dataflows/out
