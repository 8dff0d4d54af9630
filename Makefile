# wan-dist: `make demo` runs the main job on an embedded tiny model; `make test` runs the test suite.
# Both create the virtualenv in .venv and install everything they need (torch first, pinned to the local CPU
# wheel's version, so no other package can pull a different torch build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_CKPT := runs/demo-ckpt
DEMO_OUT := runs/demo
NPROC ?= 2

.PHONY: install demo test test-fast lint clean system-deps slurm-up slurm-down

# Debian packages the system tests need (installed with --no-install-recommends, only when missing, only as root).
# Slurm test cluster (tests/cluster/): tests marked `slurm`.
SYSTEM_PKGS := slurmctld slurmd slurm-client munge
# Gradio UI tests (tests/test_ui_browser.py): headless Chromium, driven by Playwright through /usr/lib/chromium/chromium,
# and a CJK font so the page's Chinese text renders in it (docs/ui.png)
SYSTEM_PKGS += chromium fonts-wqy-microhei

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p runs
	$(BIN)/wan-dist tiny-checkpoint tiny-ti2v $(DEMO_CKPT) --overwrite
	$(BIN)/wan-dist torchrun --standalone --nproc_per_node $(NPROC) launch/run.py model=tiny-ti2v \
	    ckpt_dir=$(DEMO_CKPT) manifest=examples/prompts.csv out_dir=$(DEMO_OUT) logger=wandb
	$(BIN)/wan-dist report $(DEMO_OUT)
	@echo
	@echo "Where to look:"
	@echo "  videos:          $(DEMO_OUT)/videos/<id>.mp4 (random weights: noise-like, real H.264)"
	@echo "  sidecars:        $(DEMO_OUT)/videos/<id>.json (request, seed, per-stage and per-step timings, layout)"
	@echo "  ledger:          $(DEMO_OUT)/results.jsonl (one line per video)"
	@echo "  timings report:  $(DEMO_OUT)/report/report.md, made by: .venv/bin/wan-dist report $(DEMO_OUT)"
	@echo "  plots:           $(DEMO_OUT)/report/stage_breakdown.png, $(DEMO_OUT)/report/per_step.png"
	@echo "  W&B offline run: $(DEMO_OUT)/wandb/offline-run-* (upload: wandb sync <that dir>)"
	@echo "Next: examples/README.md (JSONL rows, image to video, a sweep + compare, multi-GPU commands)"

lint: $(STAMP)
	$(BIN)/ruff check .

# Never fails: without root or apt it prints why, and the tests that need the packages skip with that reason.
system-deps:
	@bash tests/cluster/apt_install.sh $(SYSTEM_PKGS) \
	  || echo "system-deps: not installed ($(SYSTEM_PKGS)); the tests that need them will skip with the reason"

# the whole suite (slow multi-process groups included), after the lint
test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -q -ra

# the quick loop while developing: everything but the tests marked slow
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -q -ra -m "not slow"

# the Slurm test cluster by hand (pytest starts and stops it itself): `make slurm-up` prints the SLURM_CONF export
slurm-up:
	@bash tests/cluster/slurm_up.sh
slurm-down:
	@bash tests/cluster/slurm_down.sh

clean:
	rm -rf runs .pytest_cache
