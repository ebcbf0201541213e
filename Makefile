# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# constraints.txt pins the tested torch pair; `make install CONSTRAINTS=` leaves the range open.
CONSTRAINTS ?= constraints.txt
CFLAG  := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
STAMP  := $(VENV)/.installed
OUT    ?= runs/demo

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CFLAG) torch torchvision
	$(PY) -m pip install -q $(CFLAG) -e ".[test]"
	# auto_LiRPA 0.3 declares torch<1.13; robustsuite.certify.lirpa_compat makes it run on torch 2.
	$(PY) -m pip install -q --no-deps auto-lirpa==0.3
	touch $(STAMP)

# The main job on the embedded digits: the digits study (configs/digits_study.yaml) trains a certified
# (CROWN-IBP), a learned-budget, an adversarially trained (PGD-AT), three stochastic (Learn2Perturb,
# ANIS2, MNG-AC) and a smoothing base model, evaluates them together in one report ($(OUT)/report:
# report.md, report.json, records.csv, plots/) and prints its table; then the verification table of
# the CROWN-IBP model (clean and certified accuracy per bound method, PGD-40 beside them).
# Rerunning skips finished models. About 5-8 minutes on 2 CPU cores.
demo: $(STAMP)
	$(VENV)/bin/robustsuite run configs/digits_study.yaml --set out=$(OUT)
	$(VENV)/bin/robustsuite verify $(OUT)/models/crown_ibp/best.pt --eps 0.1 --method ibp,crown-ibp,crown --out $(OUT)/verify.json
	@echo "report: $(OUT)/report/report.md  plots: $(OUT)/report/plots/"

# Two workers with one thread each: the tests are many small tensor ops, for which two processes beat
# two threads (and threads oversubscribe a busy machine badly).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 tests

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs .pytest_cache
