# Two entry points for a new user: `make book` and `make test`. Both set up .venv first.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
SCALE  ?= cpu
JOBS   ?= auto
# PyPI's torch wheel for Linux is a CUDA build that pulls several GB of CUDA packages; on a machine
# without a GPU, `make book TORCH_INDEX=https://download.pytorch.org/whl/cpu` gets the CPU build.
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
# A stamp named after the torch asked for: another TORCH or TORCH_INDEX reinstalls, even when
# .venv exists already.
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH) $(TORCH_INDEX)' | cksum | cut -d' ' -f1)

.PHONY: book test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(TORCH_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[book,test]"
	touch $@

$(TORCH_STAMP):
	rm -f $(VENV)/.torch-*
	mkdir -p $(VENV)
	touch $@

book: setup
	$(VENV)/bin/replib book --scale $(SCALE) --jobs $(JOBS)

test: setup
	$(PY) -m pytest

clean:
	rm -rf _build
