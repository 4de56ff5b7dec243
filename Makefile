# lorarec: `make demo` runs the main job, `make test` runs lint and every test.
# Both create .venv and install what they need on a fresh machine with only Python present.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests need, as command:package (Prometheus and its Pushgateway for the
# monitoring tests; sshd, ssh and pdsh for the test hosts the cluster tests build).
DEBS   := prometheus:prometheus prometheus-pushgateway:prometheus-pushgateway \
          sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client pdsh:pdsh
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install debs lint format unit clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# --no-compile: modules compile to bytecode when first imported, not all at install time.
	# The CPU build of torch first, pinned, so nothing pulls a CUDA build (GPU: see README).
	$(BIN)/python -m pip install -q --no-compile torch==2.13.0
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	# Then bytecode for every installed module at once, on every core. Not left to first imports:
	# where PYTHONDONTWRITEBYTECODE is set (the machines this project's CI runs on set it) nothing
	# is ever written back, and every process compiled torch, DeepSpeed and transformers from
	# source again (12 s of CPU per rank start: the test suite took 47 CPU minutes instead of 28).
	# The one file skipped is Python 3.12 syntax.
	$(BIN)/python -m compileall -q -j 0 -x 'torch/testing/_internal/py312_intrinsics\.py$$' $(VENV)/lib
	touch $(STAMP)

debs:
	@missing=""; for d in $(DEBS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $${d%%:*} >/dev/null 2>&1 || \
		case " $$missing " in *" $${d#*:} "*) ;; *) missing="$$missing $${d#*:}";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Three xdist workers on two cores: much of a launch's wall time is one process starting
# (the deepspeed launcher, imports) or Ray's processes ending, which a third worker fills.
test: $(STAMP) debs lint
	$(BIN)/python -m pytest -n 3 --dist load --maxschedchunk 2 --durations=25

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not distributed"

demo: $(STAMP)
	$(BIN)/lorarec fetch ml-100k smollm2-135m
	$(BIN)/lorarec data prepare ml-100k --out runs/data/ml-100k
	$(BIN)/lorarec train configs/demo.yaml --out runs/demo/$$(date +%Y%m%d-%H%M%S)

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
