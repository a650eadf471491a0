# gliomaseg: the targets people expect. `make run` and `make test` are the two commands in README.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TCP_NODELAY := 1

.PHONY: setup run demo test test-unit lint bench system-deps services clean redis-dep

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: any other version pulls a multi-GB CUDA build on CPU hosts.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Start the whole service on this machine with the embedded defaults (Ctrl-C stops it).
run: setup redis-dep
	$(BIN)/gliomaseg serve

## The whole loop on one machine: service + a receiving PACS + a study, then where to look.
demo: setup
	$(BIN)/gliomaseg demo

## redis-server for `make run` when no Redis answers on 127.0.0.1:6379 (serve starts and stops it itself).
redis-dep:
	@command -v redis-server >/dev/null || (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null || \
	  { echo "installing Debian package redis-server"; apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; }

## Debian packages the tests talk to: DCMTK, Orthanc, dciodvfy, Chromium, docker-compose (validation only).
system-deps:
	@missing=""; \
	for pair in echoscu:dcmtk Orthanc:orthanc dciodvfy:dicom3tools chromium:chromium docker-compose:docker-compose; do \
	  cmd=$${pair%%:*}; command -v $$cmd >/dev/null || test -x /usr/sbin/$$cmd || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

## Redis for the tests, when none answers on 127.0.0.1:6379.
services:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no

test: setup system-deps services
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy config dicom_node worker model web gliomaseg

bench: setup system-deps services
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) spool .pytest_cache
