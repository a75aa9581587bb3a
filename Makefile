# Two entry points for a fresh machine (Python 3.11, nothing installed):
#   make demo   create .venv, install, run the offline demo on the shipped demo data
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU machines this project builds on carry this torch on local disk; GPU users install
# their own torch first and then `pip install -e .` (see README).
TORCH  := torch==2.14.1 torchvision==0.29.1
# ComfyUI's source (tests run a real ComfyUI server); absent on a user's machine: those tests skip
COMFYUI := ../shared/vendor/comfyui-a125cd84.tar.gz

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,hashes,diffusers,server,evidence]'
	touch $@

# ComfyUI's own requirements (its torch lines excepted: the pinned torch stays).
$(VENV)/.comfyui: $(VENV)/.installed
	@if [ -f $(COMFYUI) ]; then \
	  mkdir -p .cache && tar -xzf $(COMFYUI) -C .cache && \
	  grep -v -E '^(torch|torchvision|torchaudio)$$' .cache/comfyui-src/requirements.txt > .cache/comfyui-requirements.txt && \
	  $(BIN)/pip install -q -r .cache/comfyui-requirements.txt; \
	else echo "no ComfyUI source at $(COMFYUI): the ComfyUI tests will skip"; fi
	touch $@

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

test: $(VENV)/.comfyui
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_match.py
	$(BIN)/python benchmarks/bench_images.py
	$(BIN)/python benchmarks/bench_prompts.py
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_fingerprint.py
	$(BIN)/python benchmarks/bench_comfyui.py
	$(BIN)/python benchmarks/bench_generation.py
	$(BIN)/python benchmarks/bench_gate.py

clean:
	rm -rf $(VENV) out
