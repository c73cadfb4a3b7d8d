# Every target creates or refreshes the virtual environment itself, so a
# fresh clone needs nothing but python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv pyc demo test lint docs bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# An editable install leaves the package uncompiled, and where PYTHONDONTWRITEBYTECODE
# is set (as on CI images) every process would compile it again, once per CLI run,
# which the test suite starts hundreds of times. Only changed files recompile.
pyc: $(STAMP)
	@$(BIN)/python -m compileall -q apixo_batch

demo: pyc
	$(BIN)/python scripts/demo.py

test: pyc
	$(BIN)/python -m pytest -q -n 6 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check apixo_batch tests bench
	$(BIN)/ruff format --check apixo_batch tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

# --strict: a broken link, a missing anchor or a page left out of the nav fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: pyc
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
	find apixo_batch -name __pycache__ -prune -exec rm -rf {} +
