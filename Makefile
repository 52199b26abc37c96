# Two commands do all set-up on a fresh machine:  `make run`  and  `make test`.
# A virtual environment is created in .venv; torch is the CPU wheel 2.13.0
# (a bare `torch` would pull a multi-GB CUDA build on this kind of machine); then the package with the
# dev (tests) and train (recipes, benchmarks: matplotlib) extras, at the tested versions of constraints.txt.
# LOCK= (empty) installs the newest versions pip resolves instead (.ci/run tests those too):
#   make test VENV=build/newest-venv LOCK=
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
LOCK ?= constraints.txt
CONSTRAINTS := $(if $(LOCK),-c $(LOCK),)

.PHONY: setup run test bench info clean

setup: $(VENV)/.installed

# The last install: peers that tests compare against (open_clip's losses, lightly's NT-Xent, MONAI's image
# loader), without their dependencies, which would pull torchvision or another torch build; tests skip
# cleanly where they are absent. With LOCK set, a venv built from another lock (or none) is rebuilt.
$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[dev,train]"
	$(PY) -m pip install -q $(CONSTRAINTS) --no-deps open_clip_torch monai lightly
	touch $@

run: setup
	$(PY) recipes/uni_mlip_roco.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

bench: setup  # writes benchmarks/results/local/ (UNIMLIP_BENCH_RESULTS=committed records into benchmarks/results/)
	$(PY) benchmarks/bench_contrastive.py $(ARGS)

info: setup
	$(PY) -m unimlip_kit.info

clean:
	rm -rf $(VENV) build dist *.egg-info
