# Two commands do everything: `make train` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install train test test-all lint docs clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	@# trackers pulls in the GUI opencv-python, whose cv2 needs libGL; the headless build's cv2 goes back on top
	$(BIN)/pip install --force-reinstall --no-deps -q "opencv-python-headless>=4.9"
	@# headless Chromium + its driver for tests/serve/test_page.py (Debian, as root); without them that test skips
	command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
		|| echo "make install: no chromium/chromium-driver installed; the serve page's browser test will skip"
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/fourm21-train $(ARGS)

lint: install
	$(BIN)/ruff check .

# docs/ as a site in site/ (mkdocs.yml); strict: a warning (a broken link or anchor, a page left out of the
# nav) fails the build. No -q: mkdocs' quiet mode drops the warnings that strict mode counts.
docs: install
	$(BIN)/mkdocs build --strict

# pytest exits 5 when it collects no test; make treats any non-zero exit as failure. -n: pytest-xdist, one
# worker per core (at most 4: each holds its own torch), each worker and the CLIs it starts on one thread
# (tests/conftest.py); ARGS="-n 0" runs them in this process.
XDIST := -n auto --maxprocesses=4
test: install lint docs
	$(BIN)/python -m pytest -m "not slow" -q $(XDIST) $(ARGS)

test-all: install lint docs
	$(BIN)/python -m pytest -q $(XDIST) $(ARGS)

clean:
	rm -rf runs outputs .pytest_cache .ruff_cache
