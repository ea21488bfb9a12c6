# Two commands do everything on a fresh machine (each creates .venv/ and installs what it needs):
#   make demo   - the main job on the built-in default (REPA vs vanilla, one seed, 300 steps; probes, figures)
#   make test   - the test suite
#   make extended - the study behind RESULTS.md: 3 seeds x (REPA, vanilla, shuffled-target control) x 2000 steps
#   make teachers - train the shipped Fashion-MNIST teachers and evaluator (committed in train/weights/)
#   make compare  - vanilla, REPA, iREPA, HASTE, SRA, Dispersive and REG side by side (3 seeds x 2000 steps)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo extended compare test bench install clean teachers data

# pip byte-compiles what it installs one file at a time (about 75 s on 2 cores); compileall on all
# cores does the same in about 40 s. Like pip, it goes on past files it cannot compile (a few of
# torch's test helpers use Python 3.12-only syntax), hence the `|| true`.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

# the default's data: found, or Debian's package installed (as root), or torchvision's download; says which
data: $(STAMP)
	$(PY) -m train.data.get_data

demo: $(STAMP) data
	$(PY) -m probe.demo $(DEMO_ARGS)

extended: $(STAMP) data
	$(PY) -m probe.demo --seeds 0 1 2 --steps 2000 --control --n-images 500 --n-train 500 \
	  --metrics cknna cka mutual_knn linear_probe cknna_token lds \
	  --set eval_every=500 eval_samples=2000 ckpt_every=500 sample_every=500 \
	  --out runs/extended --figures figures/extended $(DEMO_ARGS)

# the shipped Fashion-MNIST teachers and evaluator (train/weights/): about an hour of one core each,
# resumable; skips what is built (--rebuild in TEACHERS_ARGS trains again)
teachers: $(STAMP)
	$(PY) -m train.targets.make_teachers $(TEACHERS_ARGS)

compare: $(STAMP)
	bash studies/compare.sh

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in train_step metrics layer_sweep linear_probe live_align evaluation sampling; do $(PY) benchmarks/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info
