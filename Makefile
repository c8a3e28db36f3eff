# The two commands a newcomer needs: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup setup-dev system-packages demo test clean

# `make demo` needs only the package and CPU TensorFlow; the tests add the dev and notebook extras.
setup: $(VENV)/.installed-cpu
setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed-cpu: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[cpu]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-cpu
	$(BIN)/pip install --quiet -c constraints.txt -e '.[cpu,dev,notebook]'
	touch $@

# The tests take screenshots of the report and the Prefect UI with Debian's headless Chromium.
system-packages:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "make test needs Chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

demo: setup
	$(BIN)/segflow demo

test: setup-dev system-packages
	$(BIN)/python -m pytest
	KERAS_BACKEND=jax $(BIN)/python -m pytest tests/models -q

clean:
	rm -rf $(VENV) demo-output
