# Two set-up commands on a fresh Linux machine (see README): `make demo` and `make test`.
# Each installs what it needs and then runs; re-running reuses what is already installed.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-deps clean

demo: install ## install, then run the demo on the embedded Triton
	$(BIN)/loadtest demo $(ARGS)

test: install system-deps ## install (with Prometheus and Chromium), then run the test suite
	$(BIN)/python -m pytest $(ARGS)

install: $(BIN)/loadtest

$(BIN)/loadtest: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	# torch first, pinned: an unpinned torch drags in gigabytes of CUDA wheels on a CPU machine
	$(BIN)/python -m pip install --quiet "$(TORCH)" -c constraints.txt
	# constraints.txt: the versions the suite last passed with (numpy<2 for PyTriton, and a pyarrow that accepts it)
	$(BIN)/python -m pip install --quiet -e ".[all]" -c constraints.txt
	touch $(BIN)/loadtest

# Debian packages the integration tests use: a real Prometheus (+ promtool) and headless Chromium.
system-deps:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v chromium >/dev/null; then \
		echo "prometheus and chromium already installed"; \
	else \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus chromium; \
	fi

clean:
	rm -rf $(VENV) results .pytest_cache
