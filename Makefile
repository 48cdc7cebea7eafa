# Two commands set everything up: `make book` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
PROXY  := node_modules/.bin/configurable-http-proxy
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

ASSIGNMENTS := $(notdir $(wildcard solutions/ex*))
NOTEBOOKS   := $(wildcard chapters/*/*.ipynb)

.PHONY: help venv system-deps book test lab class release grade outputs bench clean

help:
	@echo "make book     build the HTML book into _build/html (creates .venv if missing)"
	@echo "make test     run every test: library, notebooks, grading, release, book"
	@echo "make lab      JupyterLab with nbgrader on the exercises"
	@echo "make class    JupyterHub for a class on this machine (as root): make class STUDENTS='ana ben'"
	@echo "make release  regenerate exercises/ from solutions/"
	@echo "make grade    grade submissions: make grade A=ex02_attention S=path/to/submissions"
	@echo "make outputs  re-execute the chapter and solution notebooks and save their outputs"
	@echo "make bench    benchmarks against the libraries people use"

venv: $(STAMP)

# torch first, so pip takes the CPU wheel on disk instead of a multi-GB CUDA build. pip compiles the
# installed modules one file at a time; compileall does the same on every core afterwards (-j 0):
# about 125 s -> 95 s for the whole install on 2 cores, with the wheels in pip's cache.
$(STAMP): requirements.txt requirements-no-deps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	$(PY) -m pip install --quiet --no-compile --no-deps -r requirements-no-deps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true  # a few packages ship files that do not compile
	@touch $(STAMP)

book: $(STAMP)
	$(PY) -m llmcourse.book build

# bubblewrap (the grader's sandbox) and chromium (the browser test): installed with apt-get
# when root and missing; elsewhere the script says what to ask for (see the script).
system-deps:
	@sh scripts/system_deps.sh sandbox browser

# Two workers (pytest-xdist); --dist loadscope keeps each notebook's cells in order on one worker.
# The course's small models are trained once, before the workers start, if the cache lacks them.
WORKERS ?= 2
test: $(STAMP) system-deps $(PROXY)
	$(PY) -m pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg -ra --durations=15 \
		-n $(WORKERS) --dist loadscope --no-loadscope-reorder --warm-course-models $(PYTEST_ARGS)

lab: $(STAMP)
	$(PY) -m llmcourse.cli lab

# JupyterHub's proxy, configurable-http-proxy, from npm (package-lock.json); skipped with a note without npm.
$(PROXY): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --ignore-scripts --loglevel=error; \
	else echo "npm is missing: the class (make class) and its test need Node.js and npm"; fi

# make class STUDENTS="ana ben" [INSTRUCTOR=name] [PORT=8000]: set up (or extend) the class, then run its hub in
# the foreground until Ctrl-C (give the other `llmcourse class` commands in a second terminal).
STUDENTS ?=
INSTRUCTOR ?= instructor
PORT ?= 8000
class: $(STAMP) $(PROXY)
	@sh scripts/system_deps.sh sandbox
	@if [ -n "$(STUDENTS)" ]; then $(PY) -m llmcourse.cli class setup --instructor $(INSTRUCTOR) $(STUDENTS); fi
	$(PY) -m llmcourse.cli class start --port $(PORT)

release: $(STAMP)
	$(PY) -m llmcourse.cli release $(ASSIGNMENTS)

A ?= ex02_attention
S ?= submitted
JOBS ?= 2
grade: $(STAMP)
	@sh scripts/system_deps.sh sandbox
	$(PY) -m llmcourse.cli grade $(A) $(S) --jobs $(JOBS)

outputs: $(STAMP)
	$(PY) -m llmcourse.cli outputs --jobs $(WORKERS) $(NOTEBOOKS) $(wildcard solutions/*/*.ipynb)

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf _build _vendor
