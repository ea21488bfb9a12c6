# Two commands do everything on a fresh machine (each creates .venv/ and installs what it needs):
#   make demo   - the main job on the built-in default (REPA vs vanilla, probes, figures)
#   make test   - the test suite
#   make extended - the same study at 2000 steps per run (about half an hour; behind RESULTS.md)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo extended test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m probe.demo $(DEMO_ARGS)

extended: $(STAMP)
	$(PY) -m probe.demo --steps 2000 --set eval_every=200 --out runs/demo-2000 --figures figures/steps2000 $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in train_step metrics layer_sweep linear_probe; do $(PY) benchmarks/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info
