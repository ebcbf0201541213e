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

# The main job on the embedded digits: a certified (CROWN-IBP) and an adversarially trained (PGD-AT)
# model, then one report that puts bounds, attacks and smoothing side by side (runs/demo/eval).
demo: $(STAMP)
	$(VENV)/bin/robustsuite train configs/digits_crown_ibp.yaml --out $(OUT)/crown_ibp
	$(VENV)/bin/robustsuite verify $(OUT)/crown_ibp/best.pt --eps 0.1 --method ibp,crown-ibp,crown --out $(OUT)/crown_ibp/verify.json
	$(VENV)/bin/robustsuite train configs/digits_pgd_at.yaml --out $(OUT)/pgd_at
	$(VENV)/bin/robustsuite eval $(OUT)/crown_ibp/best.pt $(OUT)/pgd_at/best.pt --suite configs/suites/demo.yaml --out $(OUT)/eval

# Two workers with one thread each: the tests are many small tensor ops, for which two processes beat
# two threads (and threads oversubscribe a busy machine badly).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 tests

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs .pytest_cache
