# Two entry points for a fresh machine (Python 3.11, nothing installed):
#   make demo   create .venv, install, run the offline demo on the shipped demo data
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU machines this project builds on carry this torch on local disk; GPU users install
# their own torch first and then `pip install -e .` (see README).
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,hashes,diffusers,server]'
	touch $@

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_match.py
	$(BIN)/python benchmarks/bench_images.py
	$(BIN)/python benchmarks/bench_prompts.py
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_fingerprint.py
	$(BIN)/python benchmarks/bench_generation.py
	$(BIN)/python benchmarks/bench_gate.py

clean:
	rm -rf $(VENV) out
