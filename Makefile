# The course's commands. Each target creates .venv (Python >= 3.10 with venv) on first use.
#   make train   the main job: train FCOS on the bundled offline dataset (CPU, minutes)
#   make lab     install JupyterLab into .venv and open the course in it (make lab-check: headless check;
#                make lab LAB_DIR=. opens the whole repository: the exercises/ beside the notebooks/)
#   make test    every check: unit tests, pairing, export, and all notebooks under strict nbval
#   make regen   re-execute every notebook in place (offline, seeded) to refresh stored outputs
#   make export  rewrite fcos_lib/ from the notebooks' `#| export` cells
#   make exercises  rewrite exercises/ (the chapters with their marked code as stubs) from the notebooks
#   make grade NB=exercises/04_matching.ipynb  run the chapter's unit tests on your exercise code:
#                one line per exercise, pass or FAIL and why
#   make bench   run the speed benchmarks in bench/ (a few minutes)
#   make bench-torchvision   fcos_lib vs torchvision's FCOS on the two held-out datasets, 2 seeds, 828 iterations
#                (about 1 hour on 2 cores)
#   make ablations  chapter 10's table: every ablation row on the two held-out datasets, 2 seeds
#                (bench/ablations.py -> bench/results/ablations.json, then chapter 10 re-executed;
#                screen rows 1-3 minutes per run, 4 runs per row; the full-budget rows (version
#                0.1's default, today's, the peer) 8-15 minutes per run, 12 runs; the main job with
#                both defaults, 3 minutes per run, 4 runs; about 4 hours on 2 cores in all; resumable)
#   make figures the README's images (docs/images/): the main job's loss curve and detections,
#                and the fcos_lib-vs-torchvision chart from bench/results/ (about 7 min on 2 cores)
#   make colab   rewrite every Colab badge and install cell from [tool.fcos-course] in pyproject.toml

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LAB_STAMP := $(VENV)/.lab-stamp
LAB_DIR ?= notebooks

.PHONY: install train lab lab-check test regen export exercises grade bench bench-torchvision ablations figures colab clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m fcos_lib train $(ARGS)

$(LAB_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,lab]"
	touch $(LAB_STAMP)

# Opens http://localhost:8888/lab in your browser; ARGS=--no-browser on a remote machine.
lab: $(LAB_STAMP)
	$(VENV)/bin/jupyter lab $(LAB_DIR) $(ARGS)

# Start JupyterLab headless, fetch the lab page and chapter 00, stop it (tools/lab_check.py).
lab-check: $(LAB_STAMP)
	$(PY) tools/lab_check.py

test: $(STAMP)
	$(PY) -m pytest --nbval -n 2 --dist loadfile --no-loadscope-reorder -q

regen: $(STAMP)
	$(PY) tools/export.py
	$(PY) tools/regen.py $(NB)

export: $(STAMP)
	$(PY) tools/export.py

exercises: $(STAMP)
	$(PY) tools/exercises.py

grade: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make grade NB=exercises/04_matching.ipynb"; exit 2; }
	$(PY) tools/grade.py $(NB)

bench: $(STAMP)
	for f in bench/bench_targets.py bench/bench_inference.py bench/bench_train_step.py bench/bench_syncs.py; do $(PY) $$f || exit 1; done

bench-torchvision: $(STAMP)
	$(PY) bench/bench_vs_torchvision.py

# Rows already in the results file are skipped: an interrupted run continues where it stopped.
ablations: $(STAMP)
	$(PY) bench/ablations.py --budget smoke --rows "course default" --datasets signs --seeds 0
	$(PY) bench/ablations.py --budget screen $(ARGS)
	$(PY) bench/ablations.py --budget full --rows "course default" "default, peer's optimiser" "torchvision FCOS"
	$(PY) bench/main_job.py --rows "course default" "default, peer's optimiser"
	$(PY) tools/regen.py notebooks/10_improvements.py

figures: $(STAMP)
	$(PY) tools/figures.py

colab: $(STAMP)
	$(PY) tools/colab.py

clean:
	rm -rf $(VENV) runs .pytest_cache
