# Two entry points for a new user: `make book` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SCALE  ?= cpu
JOBS   ?= 1
# The CPU wheel of torch must come first: an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=  # e.g. https://download.pytorch.org/whl/cpu where PyPI's torch is a CUDA build

.PHONY: book test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[book,test]"
	touch $@

book: setup
	$(VENV)/bin/replib book --scale $(SCALE) --jobs $(JOBS)

test: setup
	$(PY) -m pytest

clean:
	rm -rf _build
