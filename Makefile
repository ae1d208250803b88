# bulletdrive: `make demo` runs the main job, `make test` the checks. Both create .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# pip reads the pins (torch/torchvision, which lie on local disk) from this file.
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: install demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/bulletdrive demo

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(PY) -m pytest

test: lint typecheck pytest

# Speed figures for the README; installs highway-env to compare against it.
bench: install
	$(PIP_INSTALL) -e '.[compare]'
	$(VENV)/bin/bulletdrive bench --json --compare highway-env

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
